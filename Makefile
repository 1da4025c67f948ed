# make train: create .venv, install, train on the embedded apples/oranges set. make test: the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install train test lint format

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) train.py

test: install
	$(VENV)/bin/lint-imports
	WANDB_MODE=offline $(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
