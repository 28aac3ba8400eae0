"""What train.py does around its epochs: the start-up probes, class weights, checkpoints in and out, validation.

Kept out of train.py so the script still reads top to bottom. Two promises live here: a checkpoint
never holds a NaN or infinite number (:func:`save` refuses it, the last good files stay), and a
finished epoch is saved before it is validated, so a validation that fails loses no training
(:func:`validate_and_save` runs after that save, and a resume of an epoch saved with
``val_pending`` validates it first).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from semseg.checkpoint import FORMAT_VERSION, load_model_state, rng_state, save_atomic, set_rng_state
from semseg.config import Config, config_to_dict
from semseg.distributed import DistContext, barrier, gather_objects
from semseg.engine import Stepper, TrainState, evaluate
from semseg.errors import CheckpointError, writing
from semseg.guards import check_batch_norm, check_batchable, first_batches, refuse_non_finite, smallest_train_batch
from semseg.loaders import SegmentationDataset
from semseg.losses import class_pixel_counts, class_weights
from semseg.sinks import LiveLog
from semseg.visualize import colorize, denormalize

logger = logging.getLogger("train")


def class_stats(cfg: Config, probe: SegmentationDataset, run_dir: Optional[Path]) -> Optional[dict]:
    """The training split's class pixel counts: a resumed run's cached ones, else counted now, before
    the run folder exists (a bad mask then leaves no folder behind)."""
    if cfg.loss.class_weights == "none":
        return None
    if run_dir is not None and (run_dir / "class_stats.json").is_file():
        return json.loads((run_dir / "class_stats.json").read_text())
    logger.info("counting class pixels over %d training masks for %s weights", len(probe), cfg.loss.class_weights)
    counts, image_pixels = class_pixel_counts(probe)
    return {"classes": list(probe.CLASSES), "counts": counts.tolist(), "image_pixels": image_pixels.tolist()}


def loss_weights(cfg: Config, stats: Optional[dict], run_dir: Path) -> Optional[torch.Tensor]:
    """Class weights from the pixel counts, which are cached in the run folder."""
    if stats is None:
        return None
    cache = run_dir / "class_stats.json"
    if not cache.is_file():
        with writing(cache):
            cache.write_text(json.dumps(stats, indent=1))
    weights = class_weights(cfg.loss.class_weights, np.array(stats["counts"]), np.array(stats["image_pixels"]))
    logger.info("class weights (%s): %s", cfg.loss.class_weights, ", ".join(f"{w:.2f}" for w in weights.tolist()))
    return weights


def show_images(live: LiveLog, kept: list, probe: SegmentationDataset, cfg: Config, state: TrainState) -> None:
    rows = []
    for image, truth, pred in kept:
        rows += [denormalize(image.numpy(), cfg.augment.mean, cfg.augment.std),
                 colorize(truth.numpy(), probe.PALETTE), colorize(pred.numpy(), probe.PALETTE)]  # fmt: skip
    if rows:
        caption = f"epoch {state.epoch}: image / truth / prediction"
        live.images("val_images", np.stack(rows).transpose(0, 3, 1, 2), caption, state.iteration)


def restore_training(stepper: Stepper, ckpt: dict, path: str, ctx: DistContext) -> TrainState:
    """Weights, optimiser, grad scaler, EMA, progress and this rank's RNG state from ``ckpt``."""
    load_model_state(stepper.raw, ckpt["model"], path)
    stepper.optimizer.load_state_dict(ckpt["optimizer"])
    if stepper.scaler is not None and ckpt.get("scaler"):
        stepper.scaler.load_state_dict(ckpt["scaler"])
    if stepper.ema is not None:
        if ckpt.get("ema") is None:
            raise CheckpointError(f"{path}: train.ema is on but the checkpoint holds no EMA weights")
        stepper.ema.load_state_dict(ckpt["ema"])
    ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
    set_rng_state(ranks[ctx.rank] if len(ranks) == ctx.world_size else ckpt["rng"])
    logger.info("resumed %s at epoch %d, iteration %d", path, ckpt["state"]["epoch"], ckpt["state"]["iteration"])
    return TrainState(**ckpt["state"])


def checkpoint_dict(stepper: Stepper, state: TrainState, cfg: Config, probe: SegmentationDataset, metrics: Optional[dict], ctx: DistContext) -> dict:
    rng_ranks = gather_objects(rng_state(), ctx)  # every rank's, so a resume restores each one's own
    return {
        "format_version": FORMAT_VERSION, "model": stepper.raw.state_dict(), "optimizer": stepper.optimizer.state_dict(),
        "ema": stepper.ema.state_dict() if stepper.ema is not None else None,
        "scaler": stepper.scaler.state_dict() if stepper.scaler is not None else None,
        "state": dataclasses.asdict(state), "config": config_to_dict(cfg), "rng": rng_ranks[0], "rng_ranks": rng_ranks,
        "classes": list(probe.CLASSES), "palette": [list(c) for c in probe.PALETTE],
        "ignore_index": probe.IGNORE_INDEX, "dataset": cfg.data.name, "metrics": metrics,
    }  # fmt: skip


def save(checkpoint: dict, run_dir: Path, ctx: DistContext, *names: str) -> None:
    """Rank 0 writes (atomically); the others wait, so no rank runs ahead of a checkpoint. Weights, EMA or
    optimiser state holding NaN or infinity stop the run on every rank instead (the last good files stay)."""
    refuse_non_finite(checkpoint, checkpoint["state"]["iteration"])
    if ctx.is_main:
        for name in names:
            save_atomic(checkpoint, run_dir / name)
    barrier(ctx)


def validate_epoch(cfg: Config, state: TrainState, stepper: Stepper, val_loader: DataLoader, probe: SegmentationDataset,
                   live: LiveLog, log: Callable[[dict], None]) -> dict:  # fmt: skip
    """Score the val split (with the EMA weights when on), log and plot it; the confusion is summed over ranks."""
    model = stepper.ema.module if stepper.ema is not None else stepper.model
    confusion, kept = evaluate(model, val_loader, probe.num_classes, probe.IGNORE_INDEX, stepper.device,
                               cfg.log.num_val_images, cfg.infer, cfg.train.amp)  # fmt: skip
    metrics = confusion.all_reduce().compute()
    iou = dict(zip(probe.CLASSES, metrics["iou"]))
    log({"type": "val", "epoch": state.epoch, "iteration": state.iteration, **{k: v for k, v in metrics.items() if k != "iou"}, "iou": iou})
    logger.info("epoch %d: val mIoU %.2f%%, pixel acc %.2f%%%s", state.epoch, 100 * metrics["miou"],
                100 * metrics["pixel_acc"], " (EMA weights)" if stepper.ema is not None else "")  # fmt: skip
    show_images(live, kept, probe, cfg, state)
    return metrics


def validate_and_save(cfg: Config, state: TrainState, stepper: Stepper, loaders: tuple[DataLoader, SegmentationDataset],
                      live: LiveLog, log: Callable[[dict], None], run_dir: Path, ctx: DistContext) -> dict:  # fmt: skip
    """Validate the saved epoch, then save it again with its score (``best.pt`` first when it is the best)."""
    val_loader, probe = loaders
    metrics = validate_epoch(cfg, state, stepper, val_loader, probe, live, log)
    is_best = metrics["miou"] > state.best_miou
    state.best_miou, state.val_pending = max(state.best_miou, metrics["miou"]), False
    save(checkpoint_dict(stepper, state, cfg, probe, metrics, ctx), run_dir, ctx, *(["best.pt"] if is_best else []), "last.pt")
    return metrics


def preflight(cfg: Config, stepper: Stepper, probe: SegmentationDataset, train_loader: DataLoader, val_loader: DataLoader,
              ctx: DistContext) -> None:  # fmt: skip
    """What only the data and the model can show, before a run folder exists: batches that cannot be stacked,
    a BatchNorm fed one sample, and one real validation batch through the validation path."""
    check_batchable(train_loader.dataset.dataset, cfg.data.batch_size, cfg.augment.crop is not None, "data.batch_size", "augment.crop")
    check_batchable(val_loader.dataset, cfg.data.val_batch_size, cfg.augment.eval_size is not None, "data.val_batch_size", "augment.eval_size")
    smallest = smallest_train_batch(len(train_loader.dataset), cfg.data.batch_size, ctx.world_size)
    check_batch_norm(stepper.raw, train_loader.dataset[0][0], smallest, stepper.device)
    model = stepper.ema.module if stepper.ema is not None else stepper.raw
    evaluate(model, first_batches(val_loader), probe.num_classes, probe.IGNORE_INDEX, stepper.device, 0, cfg.infer, cfg.train.amp)
