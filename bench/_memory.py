"""Peak memory of one call, on CUDA (allocator statistics) or CPU (peak resident set size).

CPU: ``VmHWM`` in ``/proc/self/status`` is the process's peak RSS; writing ``5``
to ``/proc/self/clear_refs`` (Linux ≥ 4.0) resets it to the current RSS, so the
peak of one call can be read without a subprocess. ``malloc_trim`` first hands
freed heap back to the OS, so memory an earlier model freed is not counted as
held. Without ``clear_refs`` the fallback is ``ru_maxrss``, which only rises:
it sees a call's peak only where it exceeds every earlier one.
"""

from __future__ import annotations

import ctypes
import gc
import re
import resource
from pathlib import Path
from typing import Callable

import torch

MiB = 2**20


def _proc_status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1))


def _can_reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux ≥ 4.0: resets VmHWM to the current RSS
        _proc_status_kib("VmHWM")
        return True
    except (OSError, AttributeError):
        return False


CPU_RESET = _can_reset_peak_rss()


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated above memory_allocated before the call"
    if CPU_RESET:
        return "peak RSS (VmHWM, reset via /proc/self/clear_refs) above RSS before the call, after gc + malloc_trim"
    return "growth of resource.getrusage ru_maxrss (a lower bound: sees only peaks above every earlier one)"


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_mib(fn: Callable[[], None], device: torch.device) -> float:
    """Memory ``fn()`` adds at its peak above what was held before it, in MiB."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / MiB
    _malloc_trim()
    if CPU_RESET:
        Path("/proc/self/clear_refs").write_text("5")
        base = _proc_status_kib("VmRSS")
        fn()
        return (_proc_status_kib("VmHWM") - base) / 1024
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
