"""One door to a Lightning Trainer from config: trainer kwargs, checkpoint, early-stopping, progress bar, loggers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar


def build_callbacks(callbacks: dict, monitor: str, mode: str, output_dir: Path) -> list[Callback]:
    """`callbacks` blocks map onto ModelCheckpoint, EarlyStopping and TQDMProgressBar; a null block turns one off."""
    built: list[Callback] = []
    if callbacks.get("checkpoint") is not None:
        built.append(
            ModelCheckpoint(
                dirpath=output_dir / "checkpoints",
                monitor=monitor,
                mode=mode,
                auto_insert_metric_name=False,
                **callbacks["checkpoint"],
            )
        )
    if callbacks.get("early_stopping") is not None:
        built.append(EarlyStopping(monitor=monitor, mode=mode, **callbacks["early_stopping"]))
    if callbacks.get("progress_bar") is not None:
        built.append(TQDMProgressBar(**callbacks["progress_bar"]))
    return built


def build_trainer(config: dict) -> L.Trainer:
    output_dir = Path(config["paths"]["output_dir"])
    callbacks = build_callbacks(config["callbacks"], config["monitor"], config["monitor_mode"], output_dir)
    loggers = [instantiate(block) for block in (config.get("logger") or {}).values()]
    return L.Trainer(
        **config["trainer"], callbacks=callbacks, logger=loggers or False, default_root_dir=str(output_dir)
    )
