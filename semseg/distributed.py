"""Multi-process training under ``torchrun``: process-group set-up and the few collectives we need.

``torchrun --nproc_per_node=N train.py …`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
without them everything here degrades to a single process and no collective is
called, so the scripts never branch on "am I distributed" beyond ``ctx.is_main``.
Backend: NCCL on CUDA, gloo on CPU (what the tests use).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from semseg.errors import ConfigError, SemsegError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, talks to visdom and writes the run folder."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistContext:
    """Join the process group ``torchrun`` describes in the environment (no-op without it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world_size, local_rank)


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """Each process drives its own GPU (``cuda:LOCAL_RANK``); CPU processes share ``cpu``."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def check_sync_bn(ctx: DistContext, device: torch.device, wanted: bool) -> bool:
    """Whether to convert BatchNorm to SyncBatchNorm; PyTorch only syncs statistics on GPUs."""
    if not wanted or not ctx.enabled:
        return False
    if device.type != "cuda":
        raise ConfigError("train.sync_bn: PyTorch's SyncBatchNorm runs on GPUs only; set it to false for CPU (gloo) runs")
    return True


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """In-place sum over processes (identity in a single process)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True when ``flag`` is true on any process: a stop request must stop every rank at the same step."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t, ctx).item() > 0)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every process's ``obj`` (e.g. RNG states, so a resume restores each rank's own)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


# What a collective raises when another process died mid-run: gloo sees its socket close, NCCL
# sees the communicator aborted (torchrun stops the survivors only after they report).
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def peer_lost(exc: BaseException, ctx: DistContext) -> Exception | None:
    """A one-line :class:`SemsegError` when ``exc`` means another process stopped, else None.

    The process that failed has printed its own one-line reason (out of memory, a bad file, …);
    the others would add a deep gloo/NCCL traceback that hides it.
    """
    if not ctx.enabled or not (isinstance(exc, dist.DistNetworkError) or any(s in str(exc) for s in PEER_LOST)):
        return None
    return SemsegError(f"process {ctx.rank} of {ctx.world_size}: another process stopped (its error is printed above); "
                       "the last checkpoint is intact")  # fmt: skip


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
