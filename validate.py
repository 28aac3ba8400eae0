"""Evaluate a checkpoint on a dataset split: per-class IoU table, confusion matrix, metrics JSON.

    python validate.py --checkpoint runs/enet_camvid/best.pt
    python validate.py --checkpoint runs/enet_camvid/best.pt --split val --set data.root=/data/CamVid

The model and data settings come from the config stored in the checkpoint;
``--set`` changes any of them (e.g. the data root on another machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from torch.utils.data import DataLoader

from semseg.augmentations import eval_transforms
from semseg.build import resolve_device, restore
from semseg.cli import run_script
from semseg.engine import evaluate
from semseg.errors import DataError
from semseg.loaders import build_dataset
from semseg.metrics import format_confusion, format_table


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by train.py")
    parser.add_argument("--split", help="dataset split (default: the config's data.val_split)")
    parser.add_argument("--config", help="use this recipe instead of the one stored in the checkpoint")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    parser.add_argument("--out", help="metrics JSON path (default: <checkpoint>.<split>.json)")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> int:
    model, cfg, _ = restore(args.checkpoint, args.set, args.config)
    device = resolve_device(cfg.train.device)
    split = args.split or cfg.data.val_split
    dataset = build_dataset(cfg.data, split, eval_transforms(cfg.augment))
    if not dataset.has_masks:
        raise DataError(f"{cfg.data.root}: split '{split}' has no masks to score against")
    loader = DataLoader(dataset, cfg.data.val_batch_size, num_workers=cfg.data.num_workers)
    confusion, _ = evaluate(model.to(device), loader, dataset.num_classes, dataset.IGNORE_INDEX, device)
    metrics = confusion.compute()
    print(format_table(metrics, dataset.CLASSES, title=f"{cfg.model.name} on {cfg.data.name} '{split}' ({len(dataset)} images)"))
    print()
    print(format_confusion(confusion.mat, dataset.CLASSES))
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(f".{split}.json")
    record = {**metrics, "iou": dict(zip(dataset.CLASSES, metrics["iou"])), "split": split,
              "checkpoint": str(args.checkpoint), "confusion": confusion.mat.cpu().tolist()}  # fmt: skip
    out.write_text(json.dumps(record, indent=1))
    print(f"\nmetrics written to {out}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_script(validate, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
