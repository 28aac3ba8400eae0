"""How many CPU threads compute and how many data-loader workers load: sized to the cores this process may use.

On a small CPU box the split matters more than any kernel: on 2 cores one epoch took 4.5 s or
85 s depending on what else ran (issue 14), because an OpenMP parallel region waits for its
slowest thread and every pre-empted one stalls the whole step. So ``train.threads`` (default: every usable core, shared among the
processes of a ``torchrun`` job) sets torch's intra-op threads, and ``data.num_workers: auto``
(the default) gives the loaders only the cores the compute leaves free: none on a CPU run that
computes on every core (the main process then loads between steps), up to 8 for a GPU run.

"Usable" honours both limits a container may set: the CPU affinity mask and a cgroup CPU quota
(``docker --cpus=2`` on a 64-core host leaves ``os.cpu_count()`` at 64).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from semseg.errors import ConfigError

logger = logging.getLogger(__name__)

MAX_GPU_WORKERS = 8
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> Optional[int]:
    """Cores a cgroup v2 quota allows (rounded up), or None where there is no quota or no such file."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask, capped by a cgroup quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return min(cores, limit) if limit is not None else cores


@dataclass(frozen=True)
class CpuBudget:
    """Intra-op threads and loader workers of one process; ``why`` explains the split in the log."""

    threads: int
    workers: int
    why: str
    oversubscribed: bool = False

    def describe(self) -> str:
        return f"cpu: {self.threads} compute thread(s), {self.workers} data-loader worker(s) ({self.why})"


def resolve_budget(threads: Optional[int], workers: Union[int, str], device: torch.device, processes: int = 1) -> CpuBudget:
    """The concrete split for ``train.threads`` / ``data.num_workers`` on ``device`` (``processes`` share the cores)."""
    if threads is not None and threads < 1:
        raise ConfigError(f"train.threads: expected at least 1 (or null for every usable core), got {threads}")
    if workers != "auto" and int(workers) < 0:
        raise ConfigError(f"data.num_workers: expected 0 or more (or auto), got {workers}")
    cores = max(1, usable_cores() // max(1, processes))
    share = f"{cores} usable core(s)" + (f" per process ({processes} processes)" if processes > 1 else "")
    compute = threads if threads is not None else cores
    if workers != "auto":
        over = device.type == "cpu" and compute + int(workers) > cores
        why = share + (f"; {compute} threads + {workers} workers oversubscribe them (data.num_workers=auto does not)" if over else "")
        return CpuBudget(compute, int(workers), why, over)
    if device.type == "cpu":
        spare = max(0, cores - compute)
        return CpuBudget(compute, spare, f"{share}; workers get the cores the compute threads leave")
    return CpuBudget(compute, min(MAX_GPU_WORKERS, max(1, cores - 1)), f"{share}; one feeds the GPU, the rest load")


def apply_budget(threads: Optional[int], workers: Union[int, str], device: torch.device, processes: int = 1) -> CpuBudget:
    """Resolve the split, set torch's intra-op threads and log it; the caller sizes its loaders by ``.workers``."""
    budget = resolve_budget(threads, workers, device, processes)
    torch.set_num_threads(budget.threads)
    (logger.warning if budget.oversubscribed else logger.info)("%s", budget.describe())
    return budget
