"""Hydra glue: the resolver for collision-free run dirs, and the one conversion of a config to plain Python."""

from __future__ import annotations

import os
import uuid

from omegaconf import DictConfig, OmegaConf


def _run_id() -> str:
    # Time alone collides for jobs started in the same second; pid + random suffix does not.
    return f"{os.getpid()}-{uuid.uuid4().hex[:6]}"


if not OmegaConf.has_resolver("run_id"):
    OmegaConf.register_new_resolver("run_id", _run_id, use_cache=True)


def to_plain(cfg: DictConfig) -> dict:
    """The whole config as plain Python (resolved), so no DictConfig travels past the entry point."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
