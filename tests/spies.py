"""A callback that records what training feeds the loss (logits, targets, the loss) and what each training batch
holds, into <run dir>/spy.pt: tests check that a config lever reaches the loss through train.py, not only that a
run finishes."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class LossSpy(Callback):
    def __init__(self, max_calls: int = 64):
        self.max_calls, self.calls, self.batches = max_calls, [], []

    def on_fit_start(self, trainer, pl_module) -> None:
        loss = pl_module._loss

        def recorded(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            value = loss(logits, targets)
            if pl_module.training and len(self.calls) < self.max_calls:
                snapshot = {"logits": logits.detach().float().clone(), "targets": targets.detach().clone()}
                self.calls.append(snapshot | {"epoch": trainer.current_epoch, "loss": float(value)})
            return value

        pl_module._loss = recorded  # the instance attribute shadows the method for this fit

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        inputs = batch.get("features", batch.get("image"))
        self.batches.append({"epoch": trainer.current_epoch, "keys": sorted(batch), "shape": tuple(inputs.shape)})

    def on_fit_end(self, trainer, pl_module) -> None:
        del pl_module._loss
        state = {
            "calls": self.calls,
            "batches": self.batches,
            "log_prior": pl_module.log_prior.detach().clone(),
            "loss_weights": pl_module.loss_weights.detach().clone(),
            "logit_adjustment": float(pl_module.hparams.logit_adjustment),
        }
        torch.save(state, Path(trainer.default_root_dir) / "spy.pt")
