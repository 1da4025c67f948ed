"""Shared fixtures: compose the real configs with tiny, offline overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import lesion.runs.config  # noqa: F401  (registers the run_id resolver)
from lesion.runs.config import to_plain

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_ISIC2018 = ROOT.parent / "shared" / "data" / "isic2018"
SHARED_ISIC2024 = ROOT.parent / "shared" / "data" / "isic2024_sample"

# Small enough for 2 CPU cores; the backbone input size is overridden per test where it matters.
TINY = [
    "data.num_train=8",
    "data.num_val=4",
    "data.num_test=4",
    "data.image_size=32",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "backbone.input_size=64",
    "backbone.pretrained=false",
    "trainer.max_epochs=1",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "operating_point.bootstrap_resamples=50",
]


def compose_config(name: str, overrides: list[str], output_dir: Path) -> dict:
    """Compose conf/<name>.yaml as train.py/eval.py would, and return it resolved, as plain Python."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=[*overrides, f"paths.output_dir={output_dir}"])
    return to_plain(cfg)


def backbone_names() -> list[str]:
    return sorted(p.stem for p in (CONF / "backbone").glob("*.yaml"))


def data_names() -> list[str]:
    return sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)
