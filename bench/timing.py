"""Helpers shared by the bench scripts: a training-step timer callback and the bare PyTorch reference loop."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback


class StepTimer(Callback):
    """Training img/s over the batches after `warmup`, as Lightning runs them (logging, progress bar and all)."""

    def __init__(self, warmup: int = 3):
        self.warmup, self.starts, self.sizes, self.end = warmup, [], [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())
        self.sizes.append(len(batch["label"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        """Leaves the figure in the run dir as step_timer.json."""
        value = sum(self.sizes[self.warmup :]) / (self.end - self.starts[self.warmup])
        (Path(trainer.default_root_dir) / "step_timer.json").write_text(json.dumps({"img_per_s": value}))


def bare_loop(
    model, images: torch.Tensor, labels: torch.Tensor, steps: int, warmup: int = 3, bf16: bool = False
) -> float:
    """img/s of a plain forward/backward/Adam step on `model` (a LesionClassifier), same loss weights; bf16: CPU
    bf16 autocast around the forward pass, as Lightning's precision=bf16-mixed does."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=model.hparams.lr)
    model.train()
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images).float(), labels, weight=model.loss_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * len(labels) / (time.perf_counter() - start)
