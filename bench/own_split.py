"""Predictions of a checkpoint on the lesion-disjoint split of the run that trained it (for bench scripts that fit
something on its val split and judge it on its test split)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lesion.data import build_datamodule  # noqa: E402
from lesion.models.loading import load_model  # noqa: E402
from lesion.screening.evaluation import training_splits  # noqa: E402
from lesion.screening.predictions import Predictions, predict  # noqa: E402

DEFAULT_ROOT = str(ROOT.parent / "shared" / "data" / "isic2018")


def own_split_datamodule(ckpt: str, root: str):
    """(model, datamodule) set up for fit and test: the checkpoint's own preprocessing and, where its run stored one,
    its own split (else the split its data config carves now), read from `root`."""
    model = load_model(ckpt)
    data = dict(model.hparams.data) | {"root": root, "num_workers": 0, "cache": False}
    data["transforms"] = dict(model.deployment.transforms)
    tables = training_splits(model, ckpt)
    with tempfile.TemporaryDirectory(prefix="lesion-bench-") as tmp:  # setup reads the split file once
        if tables:
            data["split_file"] = str(Path(tmp) / "splits.csv")
            tables[0].to_csv(data["split_file"], index=False)
        datamodule = build_datamodule(data, model.data_config)
        datamodule.setup("fit")
        datamodule.setup("test")
    return model, datamodule


def own_split_predictions(ckpt: str, root: str, splits: tuple[str, ...] = ("val", "test")):
    """(model, datamodule, {split: Predictions}) on the checkpoint's own split (`own_split_datamodule`)."""
    model, datamodule = own_split_datamodule(ckpt, root)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    loaders = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader}
    predictions: dict[str, Predictions] = {s: predict(model, loaders[s](), trainer) for s in splits}
    return model, datamodule, predictions
