"""Optimizer and learning-rate schedule from config, through timm's doors (create_optimizer_v2, create_scheduler_v2)."""

from __future__ import annotations

import timm.optim
import timm.scheduler
from torch import nn
from torch.optim import Optimizer

OPTIMIZER_KEYS = ("opt", "lr", "weight_decay", "momentum", "filter_bias_and_bn", "layer_decay", "betas", "eps")
SCHEDULER_KEYS = ("sched", "warmup_epochs", "warmup_lr", "min_lr", "step_on_epochs")


def build_optimizer(net: nn.Module, config: dict) -> Optimizer:
    """timm's optimizer for the trainable parameters of `net`.

    config (conf/optimizer/*.yaml): opt (adam, adamw, sgd, ...), lr, weight_decay, filter_bias_and_bn (no weight
    decay on norms, biases and 1-d parameters), layer_decay (lr scale per layer from the head down, timm's
    `group_matcher`; null: off), momentum, betas, eps. Frozen parameters are left out."""
    _check_keys(config, OPTIMIZER_KEYS, "optimizer")
    kwargs = {k: v for k, v in config.items() if v is not None}
    if kwargs.get("betas") is not None:
        kwargs["betas"] = tuple(kwargs["betas"])
    if kwargs.get("layer_decay") is not None and not hasattr(net, "group_matcher"):
        raise ValueError(
            f"optimizer.layer_decay needs a timm model with layer groups; {type(net).__name__} (a truncated trunk "
            "with our head) has none. Set optimizer.layer_decay=null"
        )
    if "opt" not in kwargs or "lr" not in kwargs:
        raise ValueError(f"optimizer needs `opt` and `lr`, got {config}")
    if not any(p.requires_grad for p in net.parameters()):
        raise ValueError("every parameter is frozen: nothing to optimise (check backbone.freeze)")
    return timm.optim.create_optimizer_v2(net, **kwargs)


def build_scheduler(optimizer: Optimizer, config: dict | None, max_epochs: int, steps_per_epoch: int):
    """A timm scheduler, or None for a constant lr.

    config (conf/scheduler/*.yaml): sched (cosine, step, ... or null), warmup_epochs (may be fractional with
    step_on_epochs=false: warmup over that many epochs' worth of steps), warmup_lr, min_lr, step_on_epochs
    (true: the lr changes once per epoch; false: every optimizer step)."""
    config = config or {}
    _check_keys(config, SCHEDULER_KEYS, "scheduler")
    if not config.get("sched"):
        return None
    per_step = not config.get("step_on_epochs", True)
    warmup = float(config.get("warmup_epochs") or 0)
    if warmup and not per_step and warmup != int(warmup):
        raise ValueError(f"scheduler.warmup_epochs={warmup} is fractional: set scheduler.step_on_epochs=false")
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer,
        sched=config["sched"],
        num_epochs=max_epochs,
        min_lr=config.get("min_lr", 0.0),
        warmup_lr=config.get("warmup_lr", 1e-6),
        warmup_epochs=warmup,  # timm multiplies by steps_per_epoch when per_step: a fraction of an epoch works
        step_on_epochs=not per_step,
        updates_per_epoch=steps_per_epoch,
    )
    return scheduler


def _check_keys(config: dict, known: tuple[str, ...], group: str) -> None:
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(f"{group} has unknown keys {unknown}; known keys: {list(known)}")
