"""``python -m semseg.loaders ROOT --dataset NAME``: check a dataset root before training on it.

Prints, per split, how many images and masks were found, the class list, and
class pixel shares over a sample of masks — or, for each split, the one-line
reason it cannot be read (missing folder, image without mask, a mask not its
image's size, bad label …); any such problem makes the exit code 2.
``--download`` first fetches the dataset where a scripted download exists.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import yaml

from semseg.errors import SemsegError
from semseg.loaders import SegmentationDataset, dataset_class
from semseg.registry import DATASETS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m semseg.loaders", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="dataset root (what data.root will be)")
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS.names())}")
    parser.add_argument("--params", nargs="*", default=[], metavar="KEY=VALUE", help="data.params, e.g. version=v2.0")
    parser.add_argument("--splits", nargs="*", help="splits to check (default: all the dataset has)")
    parser.add_argument("--sample", type=int, default=20, help="masks to read per split for pixel statistics")
    parser.add_argument("--download", action="store_true", help="download into ROOT first, where allowed")
    return parser.parse_args(argv)


def class_shares(dataset: SegmentationDataset, sample: int) -> tuple[np.ndarray, float]:
    """Pixel share of each class and of ignored pixels over up to ``sample`` evenly spaced masks."""
    counts = np.zeros(256, dtype=np.int64)
    for i in np.linspace(0, len(dataset) - 1, min(sample, len(dataset))).astype(int):
        counts += np.bincount(dataset.load_mask(int(i)).ravel(), minlength=256)
    total = max(1, counts.sum())
    return counts[: dataset.num_classes] / total, counts[dataset.IGNORE_INDEX] / total


def size_mismatch(dataset: SegmentationDataset) -> str | None:
    """The first sample whose mask is not its image's size (file headers only, so the whole split is cheap)."""
    for i, sample in enumerate(dataset.samples):
        image, mask = dataset.image_size(i), dataset.mask_size(i)
        if image != mask:
            return f"{sample.mask}: mask is {mask[0]}×{mask[1]} but its image is {image[0]}×{image[1]}"
    return None


def check(args: argparse.Namespace) -> int:
    cls = dataset_class(args.dataset)
    params = {}
    for item in args.params:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    root = str(cls.download(args.root)) if args.download else args.root
    readable: list[SegmentationDataset] = []
    problems = 0
    for split in args.splits or cls.SPLITS:
        try:
            ds = DATASETS.build_checked(args.dataset, dict(params, root=root, split=split), where="data.params")
        except SemsegError as exc:
            print(f"{split:>10}: cannot read — {exc}")
            problems += 1
            continue
        readable.append(ds)
        masks = sum(s.mask is not None for s in ds.samples)
        line = f"{split:>10}: {len(ds)} images, {masks} masks"
        if masks == len(ds):
            try:
                mismatch = size_mismatch(ds)
                shares, ignored = class_shares(ds, args.sample) if mismatch is None and args.sample > 0 else (None, 0.0)
            except SemsegError as exc:
                mismatch = str(exc)
            if mismatch is not None:
                print(f"{line}; bad mask — {mismatch}")
                problems += 1
                continue
        if masks == len(ds) and args.sample > 0:
            top = ", ".join(f"{ds.CLASSES[c]} {100 * shares[c]:.1f}%" for c in np.argsort(-shares)[:5])
            absent = [ds.CLASSES[c] for c in np.flatnonzero(shares == 0)]
            line += f"; pixels (sample of {min(args.sample, len(ds))}): {top}; ignored {100 * ignored:.1f}%"
            line += f"; absent: {', '.join(absent[:6])}{' …' if len(absent) > 6 else ''}" if absent else ""
        print(line)
    if readable:  # from an instance: some datasets read their class list from the root
        classes = readable[0].CLASSES
        print(f"{len(classes)} classes: {', '.join(classes)} (ignore index {cls.IGNORE_INDEX})")
    print(f"root: {root}")
    if problems:
        print(f"error: {problems} problem(s) reported above", file=sys.stderr)
    return 2 if problems or not readable else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return check(args)
    except SemsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
