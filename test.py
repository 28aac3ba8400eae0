"""Predict masks with a checkpoint and write them as PNGs.

    python test.py --checkpoint runs/enet_camvid/best.pt --split test --out predictions/
    python test.py --checkpoint runs/enet_camvid/best.pt --input photos/ street.jpg list.txt

For every image, under ``--out``: ``color/<name>.png`` (palette colours),
``overlay/<name>.png`` (colours blended over the image) and ``ids/<name>.png``
(raw class ids, same file name as the image, for benchmark scoring; ignore = 255
never appears since every pixel gets a class). ``--confidence`` also writes
``confidence/<name>.png`` (max softmax probability × 255).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from semseg.build import resolve_device, restore
from semseg.cli import run_script
from semseg.config import Config
from semseg.errors import DataError
from semseg.inference import predict_image
from semseg.loaders import build_dataset
from semseg.visualize import colorize, overlay

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by train.py")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, folders of images, or .txt lists of image paths")
    source.add_argument("--split", help="a split of the checkpoint's dataset (e.g. test)")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--confidence", action="store_true", help="also write per-pixel confidence PNGs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    return parser.parse_args(argv)


def image_paths(inputs: list[str]) -> list[Path]:
    """Expand folders and .txt lists into image files; each input must yield something."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{item}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif item.suffix.lower() == ".txt" and item.is_file():
            listed = [Path(line.strip()) for line in item.read_text().splitlines() if line.strip()]
            if not listed:
                raise DataError(f"{item}: file list is empty")
            paths += listed
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return paths


def load_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def images(args: argparse.Namespace, cfg: Config) -> tuple[int, Iterator[tuple[str, Image.Image]]]:
    """How many images, and a lazy stream of (name, image); input errors surface here, before any work."""
    if args.split:
        dataset = build_dataset(cfg.data, args.split)
        return len(dataset), ((s.image.stem, dataset.load_image(i)) for i, s in enumerate(dataset.samples))
    paths = image_paths(args.input)
    return len(paths), ((p.stem, load_rgb(p)) for p in paths)


def prepare_out(out: Path, kinds: list[str]) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a folder")
    try:
        for kind in kinds:
            (out / kind).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out}: cannot create output folder ({exc.strerror})") from None


def run(args: argparse.Namespace) -> int:
    model, cfg, ckpt = restore(args.checkpoint, args.set)
    device = resolve_device(cfg.train.device)
    model.to(device)
    palette = [tuple(c) for c in ckpt["palette"]]
    out = Path(args.out)
    kinds = ["color", "overlay", "ids"] + (["confidence"] if args.confidence else [])
    prepare_out(out, kinds)
    total, stream = images(args, cfg)
    count = 0
    for name, image in tqdm(stream, total=total, desc="predict", dynamic_ncols=True, disable=None):
        ids, confidence = predict_image(model, image, cfg.augment, device)
        ids_np = ids.numpy().astype(np.uint8)
        colors = colorize(ids_np, palette)
        Image.fromarray(ids_np, mode="L").save(out / "ids" / f"{name}.png")
        Image.fromarray(colors, mode="RGB").save(out / "color" / f"{name}.png")
        overlay(image, colors).save(out / "overlay" / f"{name}.png")
        if args.confidence:
            Image.fromarray((confidence.numpy() * 255).round().astype(np.uint8), mode="L").save(out / "confidence" / f"{name}.png")
        count += 1
    print(f"wrote {count} predictions to {out}/ ({', '.join(kinds)})")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_script(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
