"""Train a segmentation model from a YAML recipe.

    python train.py                                   # built-in synthetic scenes, a few minutes on CPU
    python train.py --config configs/enet_camvid.yml --set data.root=data/CamVid train.epochs=50
    python train.py --resume runs/enet_camvid/last.pt  # continue where it stopped

Writes ``runs/<name>/``: the resolved ``config.yml``, ``metrics.jsonl`` (every
logged number), ``last.pt`` each epoch and ``best.pt`` by validation mIoU.
"""

from __future__ import annotations

import argparse
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
from torch.utils.data import DataLoader

from semseg.augmentations import eval_transforms, train_transforms
from semseg.build import build_model, new_run_dir, resolve_device
from semseg.cli import run_script
from semseg.checkpoint import FORMAT_VERSION, load_checkpoint, load_model_state, rng_state, save_atomic, set_rng_state
from semseg.config import Config, apply_overrides, config_from_dict, config_to_dict, dump_config, load_config
from semseg.engine import TrainState, evaluate, train_one_epoch
from semseg.loaders import SegmentationDataset, build_dataset
from semseg.losses import build_criterion, class_pixel_counts, class_weights
from semseg.metrics import format_table
from semseg.optim import build_optimizer, lr_factor
from semseg.visualize import VisdomLogger, colorize, denormalize

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
        return config_from_dict(apply_overrides(ckpt["config"], overrides), f"{args.resume} (stored config)"), None, ckpt
    path = args.config or DEFAULT_CONFIG
    cfg = load_config(path, overrides)
    ckpt = load_checkpoint(cfg.train.resume) if cfg.train.resume else None
    return cfg, path, ckpt


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def make_loaders(cfg: Config, device: torch.device) -> tuple[SegmentationDataset, DataLoader, DataLoader]:
    """(the training split without transforms, for metadata and class statistics; train loader; val loader)."""
    probe = build_dataset(cfg.data, cfg.data.train_split)
    train_set = build_dataset(cfg.data, cfg.data.train_split, train_transforms(cfg.augment, probe.IGNORE_INDEX))
    val_set = build_dataset(cfg.data, cfg.data.val_split, eval_transforms(cfg.augment))
    # Reseeded every epoch (see train()), so shuffling and worker seeds depend only on (seed, epoch)
    # and a resumed run sees exactly the batches an uninterrupted one would.
    generator = torch.Generator()
    common = dict(num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    train_loader = DataLoader(train_set, cfg.data.batch_size, shuffle=True, drop_last=len(train_set) > cfg.data.batch_size, generator=generator, **common)
    val_loader = DataLoader(val_set, cfg.data.val_batch_size, shuffle=False, **common)
    return probe, train_loader, val_loader


def loss_weights(cfg: Config, probe: SegmentationDataset, run_dir: Path) -> Optional[torch.Tensor]:
    """Class weights from the training split's pixel counts, cached in the run folder."""
    if cfg.loss.class_weights == "none":
        return None
    cache = run_dir / "class_stats.json"
    if cache.is_file():
        stats = json.loads(cache.read_text())
    else:
        logger.info("counting class pixels over %d training masks for %s weights", len(probe), cfg.loss.class_weights)
        counts, image_pixels = class_pixel_counts(probe)
        stats = {"classes": list(probe.CLASSES), "counts": counts.tolist(), "image_pixels": image_pixels.tolist()}
        cache.write_text(json.dumps(stats, indent=1))
    weights = class_weights(cfg.loss.class_weights, np.array(stats["counts"]), np.array(stats["image_pixels"]))
    logger.info("class weights (%s): %s", cfg.loss.class_weights, ", ".join(f"{w:.2f}" for w in weights.tolist()))
    return weights


def show_images(viz: VisdomLogger, kept: list, probe: SegmentationDataset, cfg: Config, epoch: int) -> None:
    rows = []
    for image, truth, pred in kept:
        rows += [denormalize(image.numpy(), cfg.augment.mean, cfg.augment.std),
                 colorize(truth.numpy(), probe.PALETTE), colorize(pred.numpy(), probe.PALETTE)]  # fmt: skip
    if rows:
        viz.images("val_images", np.stack(rows).transpose(0, 3, 1, 2), f"epoch {epoch}: image / truth / prediction")


def main(argv: Optional[list[str]] = None) -> int:
    return run_script(train, parse_args(argv))


def train(args: argparse.Namespace) -> int:
    cfg, config_path, ckpt = resolve_config(args)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    device = resolve_device(cfg.train.device)
    probe, train_loader, val_loader = make_loaders(cfg, device)
    model = build_model(cfg.model, probe.num_classes).to(device)
    optimizer = build_optimizer(cfg.optim, model)
    state = TrainState()
    if ckpt is not None:
        run_dir = Path(cfg.train.resume).resolve().parent
        load_model_state(model, ckpt["model"], cfg.train.resume)
        optimizer.load_state_dict(ckpt["optimizer"])
        state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])
        logger.info("resumed %s at epoch %d, iteration %d", cfg.train.resume, state.epoch, state.iteration)
    else:
        run_dir = new_run_dir(cfg, config_path)
    (run_dir / "config.yml").write_text(dump_config(cfg))
    criterion = build_criterion(cfg.loss, probe.IGNORE_INDEX, loss_weights(cfg, probe, run_dir)).to(device)
    iters_per_epoch = len(train_loader)
    total_iters = cfg.train.epochs * iters_per_epoch
    lr_at = lambda it: cfg.optim.lr * lr_factor(it, total_iters, iters_per_epoch, cfg.schedule)  # noqa: E731
    viz = VisdomLogger(cfg.log.visdom_server, cfg.log.visdom_port, cfg.log.visdom_env or run_dir.name, cfg.log.visdom)
    params = sum(p.numel() for p in model.parameters())
    logger.info("run folder %s | %s (%.2fM params) on %s | %s: %d train / %d val images, %d iterations per epoch",
                run_dir, cfg.model.name, params / 1e6, device, cfg.data.name, len(train_loader.dataset),
                len(val_loader.dataset), iters_per_epoch)  # fmt: skip

    with open(run_dir / "metrics.jsonl", "a") as metrics_log:

        def log(record: dict) -> None:
            metrics_log.write(json.dumps(record) + "\n")
            metrics_log.flush()
            if record["type"] == "train":
                viz.line("train_loss", record["iteration"], {"loss": record["loss"]}, "training loss")
                viz.line("lr", record["iteration"], {"lr": record["lr"]}, "learning rate")

        last_metrics: Optional[dict] = None
        while state.epoch < cfg.train.epochs:
            start = time.time()
            train_loader.generator.manual_seed(cfg.train.seed * 100_003 + state.epoch)
            mean_loss = train_one_epoch(model, train_loader, criterion, optimizer, lr_at, state, device, log, cfg.log.print_every)
            state.epoch += 1
            log({"type": "epoch", "epoch": state.epoch, "iteration": state.iteration, "loss": mean_loss,
                 "lr": lr_at(state.iteration), "seconds": round(time.time() - start, 2), "non_finite_steps": state.non_finite_steps})  # fmt: skip
            logger.info("epoch %d/%d: loss %.4f (%.1fs)", state.epoch, cfg.train.epochs, mean_loss, time.time() - start)
            is_best = False
            if state.epoch % cfg.train.val_every == 0 or state.epoch == cfg.train.epochs:
                confusion, kept = evaluate(model, val_loader, probe.num_classes, probe.IGNORE_INDEX, device, cfg.log.num_val_images)
                last_metrics = confusion.compute()
                iou = dict(zip(probe.CLASSES, last_metrics["iou"]))
                log({"type": "val", "epoch": state.epoch, "iteration": state.iteration, **{k: v for k, v in last_metrics.items() if k != "iou"}, "iou": iou})
                logger.info("epoch %d: val mIoU %.2f%%, pixel acc %.2f%%", state.epoch, 100 * last_metrics["miou"], 100 * last_metrics["pixel_acc"])
                viz.line("val_miou", state.epoch, {"mIoU": last_metrics["miou"]}, "validation mIoU")
                viz.line("val_class_iou", state.epoch, {k: (0.0 if v != v else v) for k, v in iou.items()}, "validation IoU per class")
                show_images(viz, kept, probe, cfg, state.epoch)
                is_best = last_metrics["miou"] > state.best_miou
                state.best_miou = max(state.best_miou, last_metrics["miou"])
            checkpoint = {
                "format_version": FORMAT_VERSION, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "state": dataclasses.asdict(state), "config": config_to_dict(cfg), "rng": rng_state(),
                "classes": list(probe.CLASSES), "palette": [list(c) for c in probe.PALETTE],
                "ignore_index": probe.IGNORE_INDEX, "dataset": cfg.data.name, "metrics": last_metrics,
            }  # fmt: skip
            save_atomic(checkpoint, run_dir / "last.pt")
            if is_best:
                save_atomic(checkpoint, run_dir / "best.pt")
    viz.close()
    if last_metrics is not None:
        print(format_table(last_metrics, probe.CLASSES, title=f"{cfg.model.name} on {cfg.data.name} {cfg.data.val_split}, epoch {state.epoch}"))
    print(f"run folder: {run_dir} (best val mIoU {100 * state.best_miou:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
