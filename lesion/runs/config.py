"""Hydra glue: the resolver for collision-free run dirs, and the one conversion of a config to plain Python."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def _run_id() -> str:
    # Time alone collides for jobs started in the same second; pid + random suffix does not.
    return f"{os.getpid()}-{uuid.uuid4().hex[:6]}"


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (`-m`, Optuna)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _sweep_group() -> str | None:
    """In a multirun, the sweep dir's name (one W&B group per sweep); else None."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().sweep.dir).name if in_multirun() else None


if not OmegaConf.has_resolver("run_id"):
    OmegaConf.register_new_resolver("run_id", _run_id, use_cache=True)
if not OmegaConf.has_resolver("sweep_group"):
    OmegaConf.register_new_resolver("sweep_group", _sweep_group)


def to_plain(cfg: DictConfig) -> dict:
    """The whole config as plain Python (resolved), so no DictConfig travels past the entry point."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
