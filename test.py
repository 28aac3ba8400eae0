"""Predict masks with a checkpoint and write them as PNGs.

    python test.py --checkpoint runs/enet_camvid/best.pt --split test --out predictions/
    python test.py --checkpoint runs/enet_camvid/best.pt --input photos/ street.jpg list.txt
    python test.py --checkpoint runs/enet_camvid/best.pt --input drive.mp4 --every 5 --mode slide --tile 360 480

Inputs are image files, folders of images, .txt lists of paths, animated GIFs
and videos (.mp4 .avi .mov .mkv .webm, decoded with PyAV: ``pip install av``);
frame ``i`` of ``clip.mp4`` is written as ``clip_<i:06d>.png``, every ``--every``-th
frame only. The inference flags are shortcuts for ``--set infer.*`` (doc/inference.md).

For every image, under ``--out``: ``color/<name>.png`` (palette colours),
``overlay/<name>.png`` (colours blended over the image) and ``ids/<name>.png``
(raw class ids, same file name as the image, for benchmark scoring; ignore = 255
never appears since every pixel gets a class). ``--confidence`` also writes
``confidence/<name>.png`` (max softmax probability × 255).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Optional

import numpy as np
from PIL import Image, ImageSequence
from tqdm import tqdm

from semseg.build import resolve_device, restore, writable_dir
from semseg.cli import run_script
from semseg.config import Config
from semseg.engine import autocast
from semseg.errors import DataError
from semseg.inference import add_infer_args, check_infer, describe, infer_overrides, predict_image
from semseg.loaders import build_dataset
from semseg.loaders._base import to_rgb
from semseg.precision import ready_for_inference
from semseg.threads import apply_budget
from semseg.visualize import colorize, overlay

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}  # folders are scanned for images only


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by train.py")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image or video files, folders of images, or .txt lists of paths")
    source.add_argument("--split", help="a split of the checkpoint's dataset (e.g. test)")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--confidence", action="store_true", help="also write per-pixel confidence PNGs")
    parser.add_argument("--every", type=positive_int, default=1, metavar="N", help="videos and GIFs: keep every Nth frame (default 1)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    add_infer_args(parser)
    return parser.parse_args(argv)


def positive_int(text: str) -> int:
    """argparse type for --every: 0 or a negative step would silently write nothing."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def image_paths(inputs: list[str]) -> list[Path]:
    """Expand folders and .txt lists into image and video files; each input must yield something."""
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
            absent = next((p for p in listed if not p.is_file()), None)
            if absent is not None:  # found now, not after half the predictions are written
                raise DataError(f"{item}: lists {absent}, which does not exist")
            paths += listed
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return paths


def load_rgb(path: Path) -> Image.Image:
    """Any image file as RGB (greyscale, RGBA, palette and 16-bit converted), or a one-line error."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = to_rgb(image, path)
            return rgb.copy() if rgb is image else rgb  # `image` is closed on return
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError; truncated files too
        raise DataError(f"{path}: cannot read image ({exc})") from None


def import_av(path: Path) -> ModuleType:
    """PyAV, imported only when a video is given: it is an optional dependency."""
    try:
        return importlib.import_module("av")
    except ImportError:
        raise DataError(f"{path}: reading video needs PyAV, which is not installed (pip install av)") from None


def probe_video(path: Path, every: int) -> Optional[int]:
    """Kept-frame count of a video (None when the container does not say); opening it here fails early."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    av = import_av(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: holds no video stream")
            frames = container.streams.video[0].frames
    except av.error.FFmpegError as exc:
        raise DataError(f"{path}: cannot read video ({exc.strerror or type(exc).__name__})") from None
    return math.ceil(frames / every) if frames > 0 else None


def video_frames(path: Path, every: int) -> Iterator[tuple[str, Image.Image]]:
    """Every ``every``-th decoded frame as (``<stem>_<index:06d>``, RGB image); index counts all frames."""
    av = import_av(path)
    try:
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index % every == 0:
                    yield f"{path.stem}_{index:06d}", frame.to_image()
    except av.error.FFmpegError as exc:
        raise DataError(f"{path}: cannot decode video ({exc.strerror or type(exc).__name__})") from None


def gif_frames(path: Path, every: int) -> Iterator[tuple[str, Image.Image]]:
    """Frames of an animated GIF named like video frames; a still GIF is one image named by its stem.

    PIL rather than ``torchvision.io.decode_gif``, which torchvision 0.29 deprecates.
    """
    try:
        with Image.open(path) as gif:
            if getattr(gif, "n_frames", 1) == 1:
                yield path.stem, gif.convert("RGB")
                return
            for index, frame in enumerate(ImageSequence.Iterator(gif)):
                if index % every == 0:
                    yield f"{path.stem}_{index:06d}", frame.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def frames_of(path: Path, every: int) -> Iterator[tuple[str, Image.Image]]:
    """(name, image) pairs from one input file: an image, a GIF or a video."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        yield from video_frames(path, every)
    elif suffix == ".gif":
        yield from gif_frames(path, every)
    else:
        yield path.stem, load_rgb(path)


def count_of(path: Path, every: int) -> Optional[int]:
    """Predictions one input file will give (None: unknown until decoded)."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return probe_video(path, every)
    if path.suffix.lower() == ".gif":
        return None
    return 1


def images(args: argparse.Namespace, cfg: Config) -> tuple[Optional[int], list[str], Iterator[tuple[str, Image.Image]]]:
    """How many images (None: unknown), the output names known up front (every still image's), and a lazy
    stream of (name, image). Input errors surface here, before any work: each still image's header is read."""
    if args.split:
        dataset = build_dataset(cfg.data, args.split)
        for i in range(len(dataset)):
            dataset.image_size(i)  # a file that is no image fails now, not after half the predictions
        names = [s.image.stem for s in dataset.samples]
        return len(dataset), names, ((name, dataset.load_image(i)) for i, name in enumerate(names))
    paths = image_paths(args.input)
    counts = [count_of(p, args.every) for p in paths]
    stills = [p for p in paths if p.suffix.lower() not in VIDEO_SUFFIXES | {".gif"}]
    for path in stills:
        header_of(path)
    total = None if None in counts else sum(counts)
    return total, [p.stem for p in stills], (item for p in paths for item in frames_of(p, args.every))


def header_of(path: Path) -> None:
    """Open ``path`` as an image (header only), or a one-line error naming it."""
    try:
        with Image.open(path):
            pass
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def check_names(out: Path, kinds: list[str], names: list[str]) -> None:
    """Two inputs with one output name, or an output file already there: refused before anything is written."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{name}: two inputs would both be written as {out / kinds[-1] / name}.png; rename one")
        seen.add(name)
        clash = next((out / kind / f"{name}.png" for kind in kinds if (out / kind / f"{name}.png").exists()), None)
        if clash is not None:
            raise DataError(f"{clash}: exists (earlier predictions?); nothing was overwritten: pass another --out")


def prepare_out(out: Path, kinds: list[str]) -> None:
    """Create ``out/<kind>/``, or a one-line error when ``out`` is a file or not writable."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a folder")
    for folder in (out, *(out / kind for kind in kinds)):
        writable_dir(folder, "output folder")
    try:
        for kind in kinds:
            (out / kind).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out}: cannot create output folder ({exc.strerror})") from None


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG via a temporary file + rename: a failure (disk full) leaves no truncated PNG behind.
    A file already there (a video frame's name, known only once decoded) is never replaced."""
    if path.exists():
        raise DataError(f"{path}: exists (earlier predictions?); not overwritten: pass another --out")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write prediction ({(exc.strerror or type(exc).__name__).lower()})") from None


def run(args: argparse.Namespace) -> int:
    model, cfg, ckpt = restore(args.checkpoint, args.set + infer_overrides(args))
    check_infer(cfg.infer)
    device = resolve_device(cfg.train.device)
    model, precision = ready_for_inference(model, cfg, device)
    apply_budget(cfg.train.threads, 0, device)  # images are read in this process, one at a time
    palette = [tuple(c) for c in ckpt["palette"]]
    out = Path(args.out)
    kinds = ["color", "overlay", "ids"] + (["confidence"] if args.confidence else [])
    total, names, stream = images(args, cfg)  # bad inputs fail here, before the output folder is made
    check_names(out, kinds, names)
    prepare_out(out, kinds)
    written: list[str] = []
    done: set[str] = set()
    try:
        for name, image in tqdm(stream, total=total, desc="predict", dynamic_ncols=True, disable=None):
            if name in done:  # two frames or GIFs named alike: the count must stay what is on disk
                raise DataError(f"{name}: a second input would be written as {out / 'ids' / name}.png; rename one")
            with autocast(device, precision.amp):
                ids, confidence = predict_image(model, image, cfg.augment, device, cfg.infer)
            write_prediction(out, name, image, ids.numpy().astype(np.uint8), confidence if args.confidence else None, palette)
            written.append(name)
            done.add(name)
    except DataError as exc:
        raise DataError(f"{exc}; {report_written(out, written)}") from None
    print(f"wrote {len(written)} predictions to {out}/ ({', '.join(kinds)}; inference: {describe(cfg.infer)})")
    return 0


def write_prediction(out: Path, name: str, image: Image.Image, ids: np.ndarray, confidence: Optional[Any], palette: list) -> None:
    """ids/, color/, overlay/ (and confidence/) PNGs of one image; ids/ last, so a name in ids/ is a whole prediction."""
    colors = colorize(ids, palette)
    save_png(Image.fromarray(colors, mode="RGB"), out / "color" / f"{name}.png")
    save_png(overlay(image, colors), out / "overlay" / f"{name}.png")
    if confidence is not None:
        save_png(Image.fromarray((confidence.numpy() * 255).round().astype(np.uint8), mode="L"), out / "confidence" / f"{name}.png")
    save_png(Image.fromarray(ids, mode="L"), out / "ids" / f"{name}.png")


def report_written(out: Path, written: list[str]) -> str:
    """Exactly which predictions a run that stopped part-way left on disk."""
    if not written:
        return "no prediction was written"
    listed = ", ".join(written) if len(written) <= 5 else f"{', '.join(written[:2])} … {written[-1]}"
    return f"{len(written)} prediction(s) were written before it, to {out}/ (in input order: {listed})"


def main(argv: Optional[list[str]] = None) -> int:
    return run_script(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
