"""One training epoch and one evaluation pass, shared by train.py and validate.py."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, TypeVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from semseg.config import InferConfig, TrainConfig
from semseg.distributed import DistContext, any_process
from semseg.errors import SemsegError
from semseg.inference import predict_scores
from semseg.metrics import ConfusionMatrix
from semseg.optim import set_lr

logger = logging.getLogger(__name__)

MAX_NON_FINITE_IN_A_ROW = 10
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
EVAL_PROGRESS_SECONDS = 10.0  # off a terminal, evaluate() logs progress at 10 % steps, at most this often


def autocast(device: torch.device, amp: Optional[str]) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` = bf16/fp16; a no-op for ``off`` (or None).

    ``auto`` is not a dtype: scripts resolve it once at start-up (``semseg.precision``).
    """
    if amp in (None, "off"):
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp={amp!r}: resolve 'auto' with semseg.precision.resolve_precision first (bf16, fp16 or off)")
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])
T = TypeVar("T")


class Pace:
    """Seconds per unit of work since the previous call: the rate shown in progress lines."""

    def __init__(self, done: int = 0) -> None:
        self.time, self.done = time.perf_counter(), done

    def since(self) -> float:
        return time.perf_counter() - self.time

    def per_unit(self, done: int) -> float:
        now = time.perf_counter()
        rate = (now - self.time) / max(1, done - self.done)
        self.time, self.done = now, done
        return rate


@dataclass
class TrainState:
    """Everything about progress that a resume must restore."""

    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimiser steps taken
    best_miou: float = -1.0
    non_finite_steps: int = 0
    step_in_epoch: int = 0  # optimiser steps taken in the unfinished epoch (a Ctrl-C checkpoint)
    epoch_loss_sum: float = 0.0  # of those steps, so the epoch's mean loss survives a resume
    non_finite_in_a_row: int = 0
    epoch_seconds: float = 0.0  # wall time of the unfinished epoch before a stop, so its record counts it all
    val_pending: bool = False  # the epoch is saved but its validation has not finished: a resume validates first


@dataclass
class Stepper:
    """How one optimiser step is taken: precision, accumulation, clipping, EMA.

    ``model`` is what runs forward (maybe DDP- or compile-wrapped); ``raw`` the
    plain module whose weights are saved and averaged into ``ema``.
    """

    model: nn.Module
    raw: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    cfg: TrainConfig
    ctx: DistContext
    scaler: Optional[torch.amp.GradScaler] = None
    ema: Optional[AveragedModel] = None

    def to_device(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks.to(self.device, non_blocking=True)

    def backward(self, images: torch.Tensor, masks: torch.Tensor, last_micro: bool) -> float:
        """Forward + backward of one micro-batch; NaN (and no backward) when any process saw a non-finite loss."""
        sync = contextlib.nullcontext()
        if isinstance(self.model, DistributedDataParallel) and not last_micro:
            sync = self.model.no_sync()  # all-reduce gradients once per optimiser step, not per micro-batch
        with sync:
            with autocast(self.device, self.cfg.amp):
                outputs = self.model(images)
            # The loss (and its softmax) in float32 outside autocast: CPU autocast runs softmax in bf16.
            loss = self.criterion({k: v.float() for k, v in outputs.items()}, masks)
            value = loss.item()
            if any_process(not math.isfinite(value), self.ctx, self.device):
                return math.nan
            scaled = loss / self.cfg.accumulate
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return value

    def step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if self.cfg.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.cfg.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.raw)


def build_ema(model: nn.Module, decay: float) -> Optional[AveragedModel]:
    """EMA of weights and buffers (BN statistics too, so the average is usable as is)."""
    if decay <= 0:
        return None
    if decay >= 1:
        raise SemsegError(f"train.ema: decay must be below 1 (e.g. 0.9999), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _skip_non_finite(stepper: Stepper, state: TrainState) -> None:
    stepper.optimizer.zero_grad(set_to_none=True)
    state.non_finite_steps += 1
    state.non_finite_in_a_row += 1
    logger.warning("non-finite loss at iteration %d; step skipped", state.iteration)
    if state.non_finite_in_a_row >= MAX_NON_FINITE_IN_A_ROW:
        raise SemsegError(
            f"loss was non-finite for {state.non_finite_in_a_row} steps in a row at iteration {state.iteration}; "
            "lower optim.lr or check the data (last good checkpoint kept)"
        )


def _is_out_of_memory(exc: RuntimeError) -> bool:
    """CUDA's ``OutOfMemoryError``, or a CPU allocator's plain ``RuntimeError`` saying the same."""
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _explain_out_of_memory(run: Callable[[], T], stepper: Stepper, iteration: int, shape: tuple[int, ...]) -> T:
    """``run()``; out of memory becomes a one-line :class:`SemsegError` naming the batch and what to lower."""
    try:
        return run()
    except RuntimeError as exc:
        if not _is_out_of_memory(exc):
            raise
    # outside the except block, so the traceback holding the batch and its activations is already freed
    stepper.optimizer.zero_grad(set_to_none=True)
    if stepper.device.type == "cuda":
        torch.cuda.empty_cache()
    batch, chw = shape[0], "×".join(map(str, shape[1:]))
    lower = "augment.crop"
    if batch > 1:
        lower = (f"data.batch_size or augment.crop (data.batch_size={batch // 2} "
                 f"train.accumulate={2 * stepper.cfg.accumulate} keeps the effective batch)")  # fmt: skip
    raise SemsegError(
        f"out of memory at iteration {iteration} with batch {batch} of {chw} on {stepper.device}; lower {lower}"
        + (", or set train.amp=bf16" if stepper.cfg.amp == "off" else "")
    )


def train_one_epoch(
    stepper: Stepper,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps_per_epoch: int,
    lr_at: Callable[[int], float],
    state: TrainState,
    log: Callable[[dict], None],
    should_stop: Callable[[], bool] = lambda: False,
    print_every: int = 20,
) -> bool:
    """Train until ``steps_per_epoch`` optimiser steps are done; False when stopped early by ``should_stop``.

    A non-finite loss skips its step (weights untouched) and is counted; after
    ``MAX_NON_FINITE_IN_A_ROW`` in a row training stops with a clear error rather
    than writing NaN weights over a good checkpoint. Running out of memory stops
    with a one-line error naming the batch shape and the settings to lower.

    The progress bar shows only on a terminal; with the output redirected to a file
    the main process logs a line every ``print_every`` steps instead (step, loss,
    learning rate, seconds per step), so a long epoch is not silent.
    """
    stepper.model.train()
    accumulate, micro, step_loss = stepper.cfg.accumulate, 0, 0.0
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}", leave=False, dynamic_ncols=True,
               disable=None if stepper.ctx.is_main else True)  # None: only on a terminal  # fmt: skip
    pace = Pace(state.step_in_epoch) if bar.disable and stepper.ctx.is_main else None
    for images, masks in bar:
        if state.step_in_epoch >= steps_per_epoch:
            break  # leftover micro-batches that cannot fill a whole accumulation
        if micro == 0:
            lr = lr_at(state.iteration)
            set_lr(stepper.optimizer, lr)
        last_micro, shape = micro == accumulate - 1, tuple(images.shape)
        value = _explain_out_of_memory(lambda: stepper.backward(*stepper.to_device(images, masks), last_micro),
                                       stepper, state.iteration + 1, shape)  # fmt: skip
        if not math.isfinite(value):
            _skip_non_finite(stepper, state)
            micro, step_loss = 0, 0.0
            continue
        micro, step_loss = micro + 1, step_loss + value / accumulate
        if micro < accumulate:
            continue
        _explain_out_of_memory(stepper.step, stepper, state.iteration + 1, shape)  # Adam allocates its state on step 1
        state.non_finite_in_a_row = 0
        state.iteration += 1
        state.step_in_epoch += 1
        state.epoch_loss_sum += step_loss
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        if state.iteration % print_every == 0:
            log({"type": "train", "epoch": state.epoch + 1, "iteration": state.iteration, "loss": step_loss, "lr": lr})
            if pace is not None:
                logger.info("epoch %d: step %d/%d, loss %.4f, lr %.1e, %.2f s/step", state.epoch + 1, state.step_in_epoch,
                            steps_per_epoch, step_loss, lr, pace.per_unit(state.step_in_epoch))  # fmt: skip
        micro, step_loss = 0, 0.0
        if any_process(should_stop(), stepper.ctx, stepper.device):
            return False
    return True


def spread(count: int, keep: int) -> list[int]:
    """``keep`` of ``range(count)`` evenly spaced, the first and the last included: round(linspace(0, count - 1, keep))."""
    if keep <= 0 or count <= 0:
        return []
    if keep >= count:
        return list(range(count))
    if keep == 1:
        return [0]
    return [math.floor(i * (count - 1) / (keep - 1) + 0.5) for i in range(keep)]


def images_in(loader: Iterable) -> Optional[int]:
    """How many images ``loader`` yields, when it can tell without loading any (a batching ``DataLoader``
    over a map-style dataset, or a list of batches); None otherwise."""
    if isinstance(loader, DataLoader):
        if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
            return None
        n = len(loader.sampler)  # under DDP a ShardSampler: this process's share of the split
        return n - n % loader.batch_size if loader.drop_last else n
    if isinstance(loader, (list, tuple)):
        return sum(len(batch[0]) for batch in loader)
    return None


def _batches_in(loader: Iterable) -> Optional[int]:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:  # a generator, or a DataLoader over an IterableDataset without __len__
        return None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    keep: int = 0,
    infer: InferConfig | None = None,
    amp: str = "off",
) -> tuple[ConfusionMatrix, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Confusion matrix over ``loader``, plus ``keep`` (image, truth, prediction) CPU triples spread over it.

    The kept images are ``spread(images_in(loader), keep)`` of the images in the order
    the loader yields them, so they sample the whole split rather than ``keep``
    consecutive frames of one sequence, and they are the same every epoch. Under DDP
    each process keeps that spread of its own share (a ShardSampler gives rank r the
    images r, r + W, …), which is still spread evenly over the whole split. A loader
    that cannot tell its length up front keeps its first ``keep`` images.

    ``infer`` selects whole-image, sliding-window or test-time-augmented prediction;
    ``amp`` (bf16/fp16) runs the model under autocast, scores are compared in float32.
    Off a terminal (no progress bar) progress is logged at 10 % steps, at most every
    ``EVAL_PROGRESS_SECONDS``.
    """
    model.eval()
    confusion = ConfusionMatrix(num_classes, ignore_index, device)  # all_reduce() it under DDP
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    count = images_in(loader)
    wanted = set(spread(count, keep)) if count is not None else set(range(keep))
    bar = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True, disable=None)
    total = _batches_in(loader)
    every, pace, seen = max(1, math.ceil((total or 100) / 10)), Pace(), 0
    for batch, (images, masks) in enumerate(bar, 1):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        pred = _predict_or_explain(model, images, infer, amp, device)
        confusion.update(pred, masks)
        kept += [(images[i].cpu(), masks[i].cpu(), pred[i].cpu()) for i in range(images.shape[0]) if seen + i in wanted]
        seen += images.shape[0]
        if bar.disable and batch % every == 0 and batch != total and pace.since() >= EVAL_PROGRESS_SECONDS:
            logger.info("eval: batch %d/%s, %.2f s/batch", batch, total or "?", pace.per_unit(batch))
    return confusion, kept


def _predict_or_explain(model: nn.Module, images: torch.Tensor, infer: InferConfig | None, amp: str, device: torch.device) -> torch.Tensor:
    """Class ids for a batch; out of memory becomes a one-line :class:`SemsegError` saying what to lower."""
    try:
        with autocast(device, amp):
            return predict_scores(model, images, infer).argmax(1)
    except RuntimeError as exc:
        if not _is_out_of_memory(exc):
            raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    chw = "×".join(map(str, images.shape[1:]))
    raise SemsegError(
        f"out of memory evaluating a batch of {images.shape[0]} × {chw} on {device}; lower data.val_batch_size "
        "or predict in tiles (infer.mode=slide with infer.tile, or validate.py --mode slide --tile H W)"
    )
