"""One door to a Lightning Trainer from config: trainer kwargs, checkpoint, early-stopping, progress bar, loggers."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar

from lesion.runs.loggers import ResumableCSVLogger, wandb_run_id
from lesion.runs.precision import resolve_precision

log = logging.getLogger(__name__)


class SeedEachEpoch(Callback):
    """Reseeds every RNG from (seed, epoch) as each training epoch starts, so the shuffle order, augmentation and
    dropout of an epoch do not depend on what ran before it: a resumed run repeats an uninterrupted one."""

    def __init__(self, seed: int):
        epoch_seed(seed, 0)  # a bad seed is an error before training starts
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        L.seed_everything(epoch_seed(self.seed, trainer.current_epoch), workers=True, verbose=False)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of (seed, epoch), drawn by numpy's SeedSequence: with `seed + epoch`, seed s at epoch e would replay
    seed s+1 at epoch e-1, and two seeds of a run would not be independent."""
    if seed < 0:
        raise ValueError(f"seed={seed}: a run's seed must be a non-negative integer (e.g. seed=0)")
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class ImagesSeen(Callback):
    """Training images this fit ran through on every rank: what a throughput is made of (optimizer steps times the
    batch size miss gradient accumulation, other ranks and a short last batch)."""

    def __init__(self):
        self.images, self.total = 0, 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.images += len(batch["label"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.total = int(
            trainer.strategy.reduce(torch.tensor(float(self.images), device=pl_module.device), reduce_op="sum")
        )


class EpochHistory(Callback):
    """Per-epoch train and val loss and the monitored metric, to report the generalisation gap at the best epoch."""

    def __init__(self, monitor: str, mode: str):
        self.monitor, self.mode, self.rows = monitor, mode, []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after the epoch's validation, so both losses are in callback_metrics.
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        for key, name in (("train/loss_epoch", "train_loss"), ("val/loss", "val_loss"), (self.monitor, "score")):
            if key in metrics:
                row[name] = float(metrics[key])
        self.rows.append(row)

    # In the checkpoint (Lightning saves a callback's state_dict), so a resumed run reports the whole history. The
    # checkpoint of an epoch is written after this callback's on_train_epoch_end (checkpoint callbacks run last).
    def state_dict(self) -> dict:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])

    def compared(self) -> int:
        """How many validated checkpoints the monitored score chose among (at least 1)."""
        return max(1, sum("score" in r for r in self.rows))

    def at_best(self) -> dict:
        """`best_epoch`, `train_loss_at_best`, `val_loss_at_best` for the epoch with the best monitored score."""
        scored = [r for r in self.rows if "score" in r]
        if not scored:
            return {}
        pick = max if self.mode == "max" else min
        best = pick(scored, key=lambda r: r["score"])
        return {
            "best_epoch": best["epoch"],
            "train_loss_at_best": best.get("train_loss"),
            "val_loss_at_best": best.get("val_loss"),
        }


def build_callbacks(callbacks: dict, monitor: str, mode: str, output_dir: Path, seed: int) -> list[Callback]:
    """`callbacks` blocks map onto ModelCheckpoint, EarlyStopping and TQDMProgressBar; a null block turns one off.
    `extra` is a list of `_target_` blocks for any other callback."""
    built: list[Callback] = [SeedEachEpoch(seed), EpochHistory(monitor, mode), ImagesSeen()]
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
    built += [instantiate(block) for block in callbacks.get("extra") or []]
    return built


def resume_checkpoint(config: dict) -> str | None:
    """`ckpt_path` if given; with `resume=auto`, the run dir's checkpoints/last.ckpt when it exists."""
    if config.get("ckpt_path"):
        return config["ckpt_path"]
    if config.get("resume") not in (None, "auto"):
        raise ValueError(f"resume must be null or 'auto', got {config['resume']!r}")
    last = Path(config["paths"]["output_dir"]) / "checkpoints" / "last.ckpt"
    if config.get("resume") == "auto":
        if last.is_file():
            log.info("resume=auto: continuing from %s", last)
            return str(last)
        log.info("resume=auto: no %s yet, starting fresh", last)
    return None


def build_trainer(config: dict, ckpt_path: str | None = None) -> L.Trainer:
    output_dir = Path(config["paths"]["output_dir"])
    callbacks = build_callbacks(
        config["callbacks"], config["monitor"], config["monitor_mode"], output_dir, config["seed"]
    )
    loggers = []
    for block in (config.get("logger") or {}).values():
        if block["_target_"].endswith("WandbLogger"):
            block = block | {"id": wandb_run_id(output_dir), "resume": "allow"}  # resume=auto keeps the W&B run
        logger = instantiate(block)
        if ckpt_path and isinstance(logger, ResumableCSVLogger):
            logger.resume_from(_resumed_epoch(ckpt_path))
        loggers.append(logger)
    return L.Trainer(
        **lightning_args(config["trainer"]),
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(output_dir),
    )


def lightning_args(trainer: dict) -> dict:
    """The `trainer` block as Lightning's Trainer arguments, its precision resolved for this machine (`auto`)."""
    precision = resolve_precision(trainer.get("precision", "32-true"), trainer.get("accelerator", "auto"))
    return trainer | {"precision": precision}


def _resumed_epoch(ckpt_path: str) -> int:
    """The epoch training restarts at from this checkpoint (rows of it and later ones are logged again)."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # plain values: a resumed file runs no code
    # A checkpoint saved at the end of an epoch's validation counts that epoch as processed, not completed;
    # Lightning restarts at the next one either way.
    progress = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress["processed"] if "processed" in progress else ckpt["epoch"] + 1)
