"""Evaluate a checkpoint on a dataset split: per-class IoU table, confusion matrix, metrics JSON.

    python validate.py --checkpoint runs/enet_camvid/best.pt
    python validate.py --checkpoint runs/enet_camvid/best.pt --split val --set data.root=/data/CamVid
    python validate.py --checkpoint runs/pspnet_cityscapes/best.pt --mode slide --tile 512 1024 --scales 0.75 1 1.25 --flip

The model and data settings come from the config stored in the checkpoint;
``--set`` changes any of them (e.g. the data root on another machine). The
inference flags (--mode, --tile, --stride, --scales, --flip) are shortcuts for
``--set infer.*`` (see doc/inference.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

from torch.utils.data import DataLoader

from semseg.augmentations import eval_transforms
from semseg.build import check_classes, resolve_device, restore, writable_dir, write_text_atomic
from semseg.cli import run_script
from semseg.engine import evaluate
from semseg.errors import DataError
from semseg.inference import add_infer_args, check_infer, describe, infer_overrides
from semseg.loaders import build_dataset
from semseg.metrics import format_confusion, format_table
from semseg.precision import ready_for_inference
from semseg.threads import apply_budget


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by train.py")
    parser.add_argument("--split", help="dataset split (default: the config's data.val_split)")
    parser.add_argument("--config", help="use this recipe instead of the one stored in the checkpoint")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    parser.add_argument("--out", help="metrics JSON path (default: <checkpoint>.<split>.json)")
    add_infer_args(parser)
    return parser.parse_args(argv)


def is_metrics_file(path: Path) -> bool:
    """A JSON record this script wrote (an earlier score of a checkpoint), the one kind of file --out may replace."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and {"miou", "split", "checkpoint", "confusion"} <= record.keys()


def validate(args: argparse.Namespace) -> int:
    model, cfg, ckpt = restore(args.checkpoint, args.set + infer_overrides(args), args.config)
    check_infer(cfg.infer)
    device = resolve_device(cfg.train.device)
    split = args.split or cfg.data.val_split
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(f".{split}.json")
    if out.is_dir():
        raise DataError(f"{out}: is a folder; --out takes the metrics file's path")
    if out.exists() and not is_metrics_file(out):
        raise DataError(f"{out}: exists and is not a metrics file validate.py wrote; not overwritten: pass another --out")
    writable_dir(out.parent, "metrics folder")  # before the evaluation, not after it
    dataset = build_dataset(cfg.data, split, eval_transforms(cfg.augment))
    if not dataset.has_masks:
        raise DataError(f"{cfg.data.root}: split '{split}' has no masks to score against")
    check_classes(ckpt, dataset.CLASSES, cfg.data.name, args.checkpoint)
    model, precision = ready_for_inference(model, cfg, device)
    budget = apply_budget(cfg.train.threads, cfg.data.num_workers, device)
    loader = DataLoader(dataset, cfg.data.val_batch_size, num_workers=budget.workers)
    confusion, _ = evaluate(model, loader, dataset.num_classes, dataset.IGNORE_INDEX, device, infer=cfg.infer, amp=precision.amp)
    metrics = confusion.compute()
    title = f"{cfg.model.name} on {cfg.data.name} '{split}' ({len(dataset)} images, inference: {describe(cfg.infer)})"
    print(format_table(metrics, dataset.CLASSES, title=title))
    print()
    print(format_confusion(confusion.mat, dataset.CLASSES))
    record = {**metrics, "iou": dict(zip(dataset.CLASSES, metrics["iou"])), "split": split,
              "checkpoint": str(args.checkpoint), "infer": dataclasses.asdict(cfg.infer),
              "confusion": confusion.mat.cpu().tolist()}  # fmt: skip
    write_text_atomic(out, json.dumps(record, indent=1))
    print(f"\nmetrics written to {out}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_script(validate, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
