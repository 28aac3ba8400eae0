"""Train a segmentation model from a YAML recipe.

    python train.py                                   # built-in synthetic scenes, a few minutes on CPU
    python train.py --config configs/enet_camvid.yml --set data.root=data/CamVid train.epochs=50
    python train.py --resume runs/enet_camvid/last.pt  # continue where it stopped (bit-identical on CPU)
    torchrun --nproc_per_node=4 train.py --config configs/pspnet50_camvid.yml   # DistributedDataParallel

Writes ``runs/<name>/``: the resolved ``config.yml``, ``metrics.jsonl`` (every
logged number), ``last.pt`` each epoch, ``best.pt`` by validation mIoU and, with
``train.keep_last``, the last N ``epoch_XXXX.pt``. Ctrl-C (or SIGTERM) finishes the
current step, saves a resumable ``last.pt`` and exits with code 130.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from semseg.build import build_model, check_loss, init_from_checkpoint, resolve_device
from semseg.checkpoint import check_resumable, load_checkpoint, prune_epoch_checkpoints, remove_stale_temp_files
from semseg.cli import run_script
from semseg.config import Config, apply_overrides, config_from_dict, dump_config, load_config
from semseg.data import make_loaders, set_epoch
from semseg.distributed import (DistContext, all_reduce_sum, broadcast_object, check_sync_bn, cleanup, device_for,
                                init_distributed, peer_lost)  # fmt: skip
from semseg.engine import Stepper, TrainState, build_ema, train_one_epoch
from semseg.errors import ConfigError, writing
from semseg.loaders import SegmentationDataset
from semseg.losses import build_criterion
from semseg.metrics import format_table
from semseg.optim import build_optimizer, lr_factor
from semseg.precision import resolve_precision, with_precision
from semseg.runfolder import NewRunFolder, check_resume_folder
from semseg.runlog import trim_metrics_log
from semseg.sinks import LiveLog, build_live_log, new_env_name
from semseg.sinks.tensorboard import check_available as check_tensorboard
from semseg.stop import StopRequest
from semseg.threads import apply_budget
from semseg.training import checkpoint_dict, class_stats, loss_weights, preflight, restore_training, save, validate_and_save

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "synthetic_tiny.yml")
logger = logging.getLogger("train")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"YAML recipe (default: {Path(DEFAULT_CONFIG).name}, or the resumed run's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values, e.g. train.epochs=5")
    parser.add_argument("--resume", help="checkpoint to continue from (its run folder is reused)")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> tuple[Config, Optional[str], Optional[dict[str, Any]]]:
    """The config to run: --config (or the default), else the resumed checkpoint's own."""
    overrides = list(args.set) + ([f"train.resume={args.resume}"] if args.resume else [])
    if args.config is None and args.resume:
        ckpt = load_checkpoint(args.resume)
        check_resumable(ckpt, args.resume)
        return config_from_dict(apply_overrides(ckpt["config"], overrides), f"{args.resume} (stored config)"), None, ckpt
    path = args.config or DEFAULT_CONFIG
    cfg = load_config(path, overrides)
    ckpt = load_checkpoint(cfg.train.resume) if cfg.train.resume else None
    if ckpt is not None:
        check_resumable(ckpt, cfg.train.resume)
    return cfg, path, ckpt


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def with_visdom_env(cfg: Config, run_dir: Path, ckpt: Optional[dict]) -> Config:
    """``log.visdom_env`` fixed for the run: the user's, the resumed run's own, or a new unique name."""
    if cfg.log.visdom_env:
        return cfg
    if ckpt is None:
        env = new_env_name(run_dir)
    else:  # a run from before environments were named per run keeps its folder's name
        env = ckpt.get("config", {}).get("log", {}).get("visdom_env") or run_dir.name
    return dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, visdom_env=env))


def build_stepper(cfg: Config, probe: SegmentationDataset, device: torch.device, ctx: DistContext, resuming: bool = False) -> Stepper:
    """Model (+ init_from weights, SyncBN, channels_last, EMA, DDP, compile, in that order), optimiser and grad scaler."""
    raw = build_model(cfg.model, probe.num_classes)
    if cfg.train.init_from and not resuming:  # a resume restores its own, later weights
        init_from_checkpoint(raw, cfg.train.init_from, cfg.model.name, probe.CLASSES, cfg.data.name)
    if check_sync_bn(ctx, device, cfg.train.sync_bn):
        raw = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    raw = raw.to(device, memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format)
    ema = build_ema(raw, cfg.train.ema)
    model: torch.nn.Module = raw
    if ctx.enabled:
        model = DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        model = torch.compile(model)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.amp == "fp16" else None
    # the criterion comes later, once the class weights are known
    return Stepper(model, raw, torch.nn.Identity(), build_optimizer(cfg.optim, raw), device, cfg.train, ctx, scaler, ema)


def main(argv: Optional[list[str]] = None) -> int:
    return run_script(train, parse_args(argv))


def train(args: argparse.Namespace) -> int:
    cfg, config_path, ckpt = resolve_config(args)
    ctx = init_distributed(cfg.train.device)
    folder = NewRunFolder()
    try:
        return fit(cfg, config_path, ckpt, ctx, folder)
    except RuntimeError as exc:
        lost = peer_lost(exc, ctx)
        if lost is None:
            raise
        raise lost from None
    finally:
        folder.discard_unless_started()  # a setup that failed leaves no folder (and the next run keeps its name)
        cleanup(ctx)


def close_run_file(f: Any, path: Path) -> None:
    with writing(path):
        f.close()


def fit(cfg: Config, config_path: Optional[str], ckpt: Optional[dict], ctx: DistContext, folder: NewRunFolder) -> int:
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 alone reports
    seed_everything(cfg.train.seed + ctx.rank, cfg.train.deterministic)  # initial weights are rank 0's (DDP broadcasts)
    device = device_for(ctx, resolve_device(cfg.train.device))
    precision = resolve_precision(cfg.train.amp, cfg.train.channels_last, device, cfg.model.name)
    cfg = with_precision(cfg, precision)  # once: the stepper, validation and the saved config see the same path
    logger.info("%s", precision.describe())
    budget = apply_budget(cfg.train.threads, cfg.data.num_workers, device, ctx.world_size)
    probe, train_loader, val_loader = make_loaders(cfg, device, ctx, budget.workers)
    stepper = build_stepper(cfg, probe, device, ctx, resuming=ckpt is not None)
    state = restore_training(stepper, ckpt, cfg.train.resume, ctx) if ckpt is not None else TrainState()
    run_dir = Path(cfg.train.resume).resolve().parent if ckpt is not None else None
    if ckpt is not None:
        check_resume_folder(cfg.train.resume, state.iteration)  # never over files it did not write, or a later last.pt
    check_loss(cfg.loss)  # a bad loss name or parameter fails before a run folder exists
    if cfg.log.tensorboard:
        check_tensorboard()
    steps_per_epoch = len(train_loader) // cfg.train.accumulate
    if steps_per_epoch < 1:
        raise ConfigError(f"train.accumulate: {cfg.train.accumulate} micro-batches per step, but an epoch has {len(train_loader)}")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the probes draw no random numbers of the run
        preflight(cfg, stepper, probe, train_loader, val_loader, ctx)
    stats = class_stats(cfg, probe, run_dir) if ctx.is_main else None
    if ctx.is_main:
        run_dir = run_dir or folder.make(cfg, config_path)
        cfg = with_visdom_env(cfg, run_dir, ckpt)
        remove_stale_temp_files(run_dir)  # what a kill -9 mid-save left behind
        if ckpt is not None:
            trim_metrics_log(run_dir / "metrics.jsonl", state.iteration, revalidate=state.val_pending)
        with writing(run_dir / "config.yml"):
            (run_dir / "config.yml").write_text(dump_config(cfg))
    weights = broadcast_object(loss_weights(cfg, stats, run_dir) if ctx.is_main else None, ctx)
    stepper.criterion = build_criterion(cfg.loss, probe.IGNORE_INDEX, weights).to(device)
    total_iters = cfg.train.epochs * steps_per_epoch
    lr_at = lambda it: cfg.optim.lr * lr_factor(it, total_iters, steps_per_epoch, cfg.schedule)  # noqa: E731
    live = build_live_log(cfg.log, run_dir, cfg.optim.lr, state.iteration if ckpt is not None else None) if ctx.is_main else LiveLog([])
    summary = (f"run folder {run_dir} | {cfg.model.name} ({sum(p.numel() for p in stepper.raw.parameters()) / 1e6:.2f}M params) "
               f"on {device}{f' × {ctx.world_size} processes' if ctx.enabled else ''} | {cfg.data.name}: {len(train_loader.dataset)} "
               f"train / {len(val_loader.dataset)} val images, {steps_per_epoch} steps per epoch")  # fmt: skip
    logger.info("%s%s", summary, f" | visdom env {cfg.log.visdom_env}" if cfg.log.visdom else "")
    live.text("run", summary)

    with contextlib.ExitStack() as stack:
        stack.callback(live.close)  # also on Ctrl-C and errors: what is queued still gets sent, within a timeout
        stop = stack.enter_context(StopRequest())
        metrics_path = run_dir / "metrics.jsonl" if ctx.is_main else None
        metrics_log = None
        if ctx.is_main:
            with writing(metrics_path):
                metrics_log = open(metrics_path, "a")
            stack.callback(close_run_file, metrics_log, metrics_path)  # a full disk can fail the close too

        def log(record: dict) -> None:
            if metrics_log is None:
                return
            with writing(metrics_path):
                metrics_log.write(json.dumps(record) + "\n")
                metrics_log.flush()
            live.record(record)

        metrics: Optional[dict] = ckpt.get("metrics") if ckpt is not None else None
        folder.started = True
        if state.val_pending:  # stopped while validating: the epoch's weights were saved, its score was not
            metrics = validate_and_save(cfg, state, stepper, (val_loader, probe), live, log, run_dir, ctx)
        while state.epoch < cfg.train.epochs:
            start = time.time() - state.epoch_seconds
            set_epoch(train_loader, state.epoch, state.step_in_epoch * cfg.train.accumulate * cfg.data.batch_size)
            if not train_one_epoch(stepper, train_loader, steps_per_epoch, lr_at, state, log, stop, cfg.log.print_every):
                state.epoch_seconds = time.time() - start
                save(checkpoint_dict(stepper, state, cfg, probe, metrics, ctx), run_dir, ctx, "last.pt")
                logger.warning("stopped at iteration %d; resume with: python train.py --resume %s", state.iteration, (run_dir or Path(".")) / "last.pt")
                return 130
            mean_loss = all_reduce_sum(torch.tensor([state.epoch_loss_sum / max(1, state.step_in_epoch)]), ctx).item() / ctx.world_size
            state.epoch, state.step_in_epoch, state.epoch_loss_sum, state.epoch_seconds = state.epoch + 1, 0, 0.0, 0.0
            log({"type": "epoch", "epoch": state.epoch, "iteration": state.iteration, "loss": mean_loss, "lr": lr_at(state.iteration),
                 "seconds": round(time.time() - start, 2), "non_finite_steps": state.non_finite_steps,
                 "skipped_samples": getattr(train_loader.dataset.dataset, "skipped", 0)})  # fmt: skip
            logger.info("epoch %d/%d: loss %.4f (%.1fs)", state.epoch, cfg.train.epochs, mean_loss, time.time() - start)
            state.val_pending = state.epoch % cfg.train.val_every == 0 or state.epoch == cfg.train.epochs
            # saved before validating, so a validation that fails loses no training; last.pt is written last:
            # a run killed between two saves resumes before this epoch and redoes it all
            names = ([f"epoch_{state.epoch:04d}.pt"] if cfg.train.keep_last else []) + ["last.pt"]
            save(checkpoint_dict(stepper, state, cfg, probe, metrics, ctx), run_dir, ctx, *names)
            if state.val_pending:
                metrics = validate_and_save(cfg, state, stepper, (val_loader, probe), live, log, run_dir, ctx)
            if ctx.is_main and cfg.train.keep_last:
                prune_epoch_checkpoints(run_dir, cfg.train.keep_last)
    if not ctx.is_main:
        return 0
    if metrics is not None:
        print(format_table(metrics, probe.CLASSES, title=f"{cfg.model.name} on {cfg.data.name} {cfg.data.val_split}, epoch {state.epoch}"))
    print(f"run folder: {run_dir} ({f'best val mIoU {100 * state.best_miou:.2f}%' if state.best_miou >= 0 else 'not validated'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
