"""The process's memory allocator: keep freed activation buffers for the next batch instead of returning them to
the OS (glibc on Linux; `allocator.retain_mb`, conf/allocator/default.yaml)."""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger("lesion")

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MAX_INT = 2**31 - 1  # mallopt takes a C int


def retain_freed_memory(retain_mb: int) -> bool:
    """Let glibc keep up to `retain_mb` MiB of freed memory and serve allocations below that size from its heap.

    glibc's defaults hand every buffer over 32 MiB to mmap and give it back to the OS when freed; a CPU forward pass
    at batch 64 and 225x300 allocates and frees such activation buffers layer by layer, and the next batch page-faults
    every one of them back in (zeroed by the kernel): bench/evaluation.py measured 3x slower forward passes and 1.3x
    slower training steps. The price: the process keeps up to `retain_mb` of freed memory after a peak.
    Call it at the start of an entry point: DataLoader workers forked later inherit it. 0: glibc's defaults (and
    nothing changes). Returns whether the allocator took the settings (False off glibc, where nothing is done)."""
    if retain_mb < 0:
        raise ValueError(f"allocator.retain_mb={retain_mb}: use a size in MiB, or 0 for glibc's defaults")
    if not retain_mb:
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        log.debug("allocator.retain_mb: %s's allocator is left as it is (glibc only)", platform.system())
        return False
    libc = ctypes.CDLL("libc.so.6")
    size = min(retain_mb * 2**20, MAX_INT)
    taken = all(
        libc.mallopt(param, ctypes.c_int(value))
        for param, value in ((M_MMAP_THRESHOLD, size), (M_TRIM_THRESHOLD, size), (M_TOP_PAD, min(size, 64 * 2**20)))
    )
    if not taken:
        log.warning("allocator.retain_mb=%d: glibc refused the settings; its defaults stay", retain_mb)
    return taken
