"""Peak memory of a function call, to compare implementations (lesson 10, benchmarks).

On CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`. On a Linux CPU
there is no allocator counter, so the process's resident-memory high-water mark (`VmHWM` in
`/proc/self/status`) is reset before the call (writing 5 to `/proc/self/clear_refs`) and read
after it. For that to see every tensor, glibc is told to serve allocations above 128 KiB with
`mmap` and give them back on free (`mallopt(M_MMAP_THRESHOLD)`, which also stops it from
raising that threshold by itself) when this module is imported: import it before allocating
the tensors to measure. The figure is then the call's extra resident memory: its tensors plus
small allocator and library overheads (about a MiB).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any, Callable

import torch

__all__ = ["peak_memory", "memory_measurable"]

_M_MMAP_THRESHOLD = -3
_configured = False


def _configure_malloc() -> bool:
    global _configured
    if not _configured:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _configured = bool(libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024))
    return _configured


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB -> bytes
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_measurable(device: str | torch.device = "cpu") -> bool:
    """True where `peak_memory` works: CUDA, or a Linux CPU with glibc and /proc."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available()
    if not sys.platform.startswith("linux"):
        return False
    try:
        return _configure_malloc() and _status("VmHWM") > 0
    except (OSError, RuntimeError, AttributeError):
        return False


def peak_memory(fn: Callable[[], Any], device: str | torch.device = "cpu") -> int:
    """Bytes of memory `fn()` needs at its peak beyond what was in use before the call.

    Args:
        fn: a function of no arguments (its result is dropped before returning).
        device: where `fn` allocates: "cpu" (Linux only) or a CUDA device.

    Returns:
        The peak extra memory in bytes (an int >= 0).

    Raises:
        ValueError: on a platform where it cannot be measured (see `memory_measurable`).
    """
    device = torch.device(device)
    if not memory_measurable(device):
        raise ValueError(f"peak memory cannot be measured on {device} here (needs CUDA, or Linux with glibc)")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident size
    fn()
    return max(0, _status("VmHWM") - before)


if sys.platform.startswith("linux"):  # from now on, large blocks come from mmap and go back on free
    try:
        _configure_malloc()
    except (OSError, AttributeError):  # pragma: no cover  (not glibc)
        pass
