"""`trainer.precision` resolved for this machine: bf16 where the CPU has bf16 instructions, detected, never assumed."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("lesion")

BF16 = ("bf16-mixed", "bf16-true", "bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), so bf16 autocast can be faster than float32
    rather than ~10x slower (emulated)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str | int, accelerator: str = "cpu") -> str | int:
    """Lightning's precision for `trainer.precision`. `auto`: bf16-mixed on a CPU with bf16 instructions, else
    32-true (on GPUs: bf16-mixed where supported). A bf16 precision asked for on a CPU without them falls back to
    32-true with a warning naming the key, since emulated bf16 runs ~10x slower and no faster arithmetic is gained."""
    cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    supported = cpu_has_bf16() if cpu else torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        chosen = "bf16-mixed" if supported else "32-true"
        log.info("trainer.precision=auto: %s (%s)", chosen, "bf16 instructions found" if supported else "no bf16")
        return chosen
    if str(precision) in BF16 and cpu and not supported:
        log.warning(
            "trainer.precision=%s: this CPU has no bf16 instructions (avx512_bf16 or amx_bf16 in lscpu); "
            "training in 32-true instead (emulated bf16 is ~10x slower)",
            precision,
        )
        return "32-true"
    return precision
