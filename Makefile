# make train: create .venv, install, train on the embedded apples/oranges set. make test: the import contract and the
# test suite. make docs: the data-made pages, then the docs site (site/), strictly.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install train test docs lint format

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e ".[dev,docs]"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) train.py

test: install
	$(VENV)/bin/lint-imports
	WANDB_MODE=offline $(PY) -m pytest

docs: install
	$(PY) docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
