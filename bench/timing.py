"""Helpers shared by the bench scripts: the bare PyTorch reference step, a timed loop of it, and the Lightning
callback that times train.py's steps against it."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback


def rotated(items: list, k: int) -> list:
    """`items` starting at position k (mod len): round k's order when runs are interleaved, so that no variant is
    always first (or always right after the same one) while the machine drifts."""
    k %= len(items)
    return items[k:] + items[:k]


class BareStep:
    """A plain forward/backward/Adam step on a LesionClassifier (same loss weights, same lr): the reference that
    framework overhead is measured against. bf16: CPU bf16 autocast around the forward pass, as Lightning's
    precision=bf16-mixed does."""

    def __init__(self, model, bf16: bool = False):
        self.model, self.bf16 = model, bf16
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=(model.hparams.optimizer or {}).get("lr", 1e-3))
        model.train()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.model(images).float(), labels, weight=self.model.loss_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def bare_loop(
    model, images: torch.Tensor, labels: torch.Tensor, steps: int, warmup: int = 3, bf16: bool = False
) -> float:
    """img/s of `steps` bare steps on `model` after `warmup` untimed ones."""
    step = BareStep(model, bf16)
    for _ in range(warmup):
        step(images, labels)
    start = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    return steps * len(labels) / (time.perf_counter() - start)


class PairedSteps(Callback):
    """Times each Lightning training step against a bare step run right after it, on a twin of the model (same
    hyperparameters and initial weights, its own Adam) and an in-memory random batch of the same shape.

    Lightning's time for step i is the interval from its batch start to the next one (training step, hooks,
    logging, progress bar, fetching the next batch) minus the bare step inside that interval. Both halves of a pair
    run seconds apart in one process, so the machine's drift, which swamps a 5 % effect between separate runs on a
    shared 2-core box, cancels in the per-step ratio bare time / Lightning time. Writes paired_steps.json to the
    run dir."""

    def __init__(self, warmup: int = 3):
        self.warmup = warmup
        self.starts, self.bare, self.sizes = [], [], []
        self.twin = self.batch = None

    def on_train_start(self, trainer, pl_module) -> None:
        twin = type(pl_module)(**pl_module.hparams)
        twin.load_state_dict(pl_module.state_dict())
        self.twin = BareStep(twin, bf16=str(trainer.precision).startswith("bf16"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())
        self.sizes.append(len(batch["label"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.batch is None:
            generator = torch.Generator().manual_seed(0)
            images = torch.randn(batch["image"].shape, generator=generator)
            self.batch = images, torch.arange(len(images)) % pl_module.loss_weights.numel()
        start = time.perf_counter()
        self.twin(*self.batch)
        self.bare.append(time.perf_counter() - start)

    def on_train_end(self, trainer, pl_module) -> None:
        steps = range(self.warmup, len(self.starts) - 1)  # the last step has no next start to close it
        lightning = [self.starts[i + 1] - self.starts[i] - self.bare[i] for i in steps]
        bare = [self.bare[i] for i in steps]
        images = sum(self.sizes[i] for i in steps)
        result = {
            "steps": len(bare),
            "lightning_img_per_s": images / sum(lightning),
            "bare_img_per_s": images / sum(bare),
            "ratio_median": statistics.median(b / light for b, light in zip(bare, lightning, strict=True)),
            "ratio_of_totals": sum(bare) / sum(lightning),
        }
        (Path(trainer.default_root_dir) / "paired_steps.json").write_text(json.dumps(result))
