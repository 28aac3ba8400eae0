"""Turn a run folder into PNG plots, so results can be shared without a visdom server.

    python tools/plot_run.py runs/enet_camvid_cpu
    python tools/plot_run.py runs/enet_camvid_cpu --out doc/results/enet_camvid_cpu --set data.root=../shared/data/CamVid
    python tools/plot_run.py runs/enet_camvid_cpu --checkpoint last.pt --split val --images 2

Writes into ``--out`` (default ``<run>/plots``):

* ``loss.png``: training loss per logged iteration, and each epoch's mean;
* ``lr.png``: the learning rate per iteration;
* ``miou.png``: validation mIoU and pixel accuracy over epochs;
* ``class_iou.png``: per-class IoU of the best validation record (the one ``best.pt`` holds);
* ``confusion.png``: the row-normalised confusion matrix (rows = truth), read from the
  ``<checkpoint>.<split>.json`` that ``validate.py`` wrote when it is at least as new as the
  checkpoint, else computed by running the checkpoint over the split;
* ``samples.png``: image / truth / prediction rows for ``--images`` images spread evenly over the
  split (the ones train.py shows in visdom), coloured with the palette stored in the checkpoint and
  drawn at their own pixel size, so no class of a mask is lost to resampling.

The four curves need only ``metrics.jsonl``; the last two need the checkpoint and, unless the JSON
is there, the dataset. When the dataset root is not available here (another machine's run) they
are skipped with one warning; ``--set data.root=…`` points at a local copy.

matplotlib is an optional dependency of this tool only (``pip install matplotlib``); nothing else in
semseg imports it. Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never
through ``pyplot``: no display is needed and no global figure state is kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/plot_run.py` from anywhere

from semseg.augmentations import eval_transforms  # noqa: E402
from semseg.build import check_classes, resolve_device, restore, writable_dir  # noqa: E402
from semseg.cli import run_script  # noqa: E402
from semseg.config import Config  # noqa: E402
from semseg.engine import evaluate, spread  # noqa: E402
from semseg.errors import DataError, SemsegError  # noqa: E402
from semseg.loaders import build_dataset  # noqa: E402
from semseg.precision import ready_for_inference  # noqa: E402
from semseg.runlog import read_metrics  # noqa: E402
from semseg.threads import apply_budget  # noqa: E402
from semseg.visualize import colorize, denormalize  # noqa: E402

logger = logging.getLogger("plot_run")

DPI = 90  # small PNGs (a few tens of kB per curve) that still read well on a laptop screen
GAP = 2  # white pixels between sample tiles
SAMPLES_TOP, SAMPLES_RIGHT = 24, 130  # pixels around the sample grid: column titles, class legend
Triple = tuple[np.ndarray, np.ndarray, np.ndarray]  # image, truth colours, prediction colours (H×W×3 uint8)


class PlotError(SemsegError):
    """A plot cannot be drawn here (matplotlib missing)."""


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder written by train.py (holds metrics.jsonl)")
    parser.add_argument("--out", help="folder for the PNGs (default: <run>/plots)")
    parser.add_argument("--checkpoint", default="best.pt", help="file name in the run folder, or a path (default: best.pt)")
    parser.add_argument("--split", help="split for confusion.png and samples.png (default: the config's data.val_split)")
    parser.add_argument("--images", type=int, default=4, help="rows in samples.png (0: no samples.png)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values, e.g. data.root=…")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- reading
def of_type(records: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == kind]


def row_normalise(confusion: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Each row (a true class) divided by its pixel count: the share of that class predicted as each class.

    Row-normalising makes rare classes as readable as frequent ones (raw counts are dominated by
    road and sky); a class absent from the split keeps an all-zero row rather than NaN.
    """
    mat = np.asarray(confusion, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise DataError(f"confusion matrix is {'×'.join(map(str, mat.shape))}, not square")
    sums = mat.sum(axis=1, keepdims=True)
    return np.divide(mat, sums, out=np.zeros_like(mat), where=sums > 0)


def saved_confusion(checkpoint: Path, split: str) -> Optional[tuple[np.ndarray, list[str]]]:
    """(counts, class names) from the ``<checkpoint>.<split>.json`` validate.py wrote, if it describes these weights.

    A JSON older than the checkpoint scored other weights (best.pt is rewritten as training goes
    on), so it is ignored and the matrix recomputed.
    """
    path = checkpoint.with_suffix(f".{split}.json")
    if not path.is_file():
        return None
    if checkpoint.is_file() and path.stat().st_mtime < checkpoint.stat().st_mtime:
        logger.info("%s predates %s: recomputing the confusion matrix", path, checkpoint.name)
        return None
    try:
        record = json.loads(path.read_text())
        mat, classes = np.asarray(record["confusion"], dtype=np.int64), list(record["iou"])
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path}: not a validate.py metrics file (no 'confusion' matrix and 'iou' table)") from None
    if mat.shape != (len(classes), len(classes)):
        raise DataError(f"{path}: confusion matrix is {'×'.join(map(str, mat.shape))} for {len(classes)} classes")
    logger.info("confusion matrix from %s", path)
    return mat, classes


# ---------------------------------------------------------------------------------------------- drawing
def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (inches); a one-line error naming the fix when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("matplotlib is not installed; tools/plot_run.py needs it: pip install matplotlib") from None
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: Path) -> Path:
    try:
        fig.savefig(path, dpi=DPI)
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({(exc.strerror or type(exc).__name__).lower()})") from None
    logger.info("wrote %s", path)
    return path


def plot_loss(records: Sequence[dict[str, Any]], out: Path) -> Path:
    """Per-iteration loss is noisy (one batch each); the epoch means show the trend."""
    fig = new_figure(7, 4)
    ax = fig.subplots()
    steps, epochs = of_type(records, "train"), of_type(records, "epoch")
    if steps:
        ax.plot([r["iteration"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6, label="logged iterations")
    if epochs:
        ax.plot([r["iteration"] for r in epochs], [r["loss"] for r in epochs], "o-", ms=3, label="epoch mean")
    ax.set(xlabel="iteration", ylabel="training loss", title="training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save(fig, out / "loss.png")


def plot_lr(records: Sequence[dict[str, Any]], out: Path) -> Path:
    points = of_type(records, "train") + of_type(records, "epoch")
    points.sort(key=lambda r: r["iteration"])
    fig = new_figure(7, 3.5)
    ax = fig.subplots()
    ax.plot([r["iteration"] for r in points], [r["lr"] for r in points], lw=1.2)
    ax.set(xlabel="iteration", ylabel="learning rate", title="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, out / "lr.png")


def plot_miou(vals: Sequence[dict[str, Any]], out: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(7, 4)
    ax = fig.subplots()
    epochs = [r["epoch"] for r in vals]
    ax.plot(epochs, [100 * r["miou"] for r in vals], "o-", label="mIoU")
    ax.plot(epochs, [100 * r["pixel_acc"] for r in vals], "s--", ms=4, label="pixel accuracy")
    best = max(vals, key=lambda r: r["miou"])
    ax.annotate(f"best {100 * best['miou']:.1f}%", (best["epoch"], 100 * best["miou"]), textcoords="offset points",
                xytext=(0, 8), ha="center", va="bottom")  # fmt: skip
    ax.set(xlabel="epoch", ylabel="%", title="validation", ylim=(0, 100))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return save(fig, out / "miou.png")


def plot_class_iou(vals: Sequence[dict[str, Any]], out: Path) -> Path:
    """The best record's classes: where the mIoU comes from, and which classes drag it down."""
    best = max(vals, key=lambda r: r["miou"])
    names = list(best["iou"])
    values = [float(v) if v is not None else math.nan for v in best["iou"].values()]
    fig = new_figure(7, 1.2 + 0.3 * len(names))
    ax = fig.subplots()
    ax.barh(range(len(names)), [0 if v != v else 100 * v for v in values], color="tab:blue")
    for i, v in enumerate(values):  # NaN: the class never occurs in the split nor is predicted
        ax.text(1 if v != v else 100 * v + 1, i, "n/a" if v != v else f"{100 * v:.1f}", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set(xlim=(0, 105), xlabel="IoU (%)", title=f"per-class IoU, epoch {best['epoch']} (mIoU {100 * best['miou']:.1f}%)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save(fig, out / "class_iou.png")


def plot_confusion(counts: np.ndarray, classes: Sequence[str], out: Path, title: str) -> Path:
    share = row_normalise(counts)
    n = len(classes)
    side = min(12.0, 2.5 + 0.45 * n)
    fig = new_figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), classes, rotation=90)
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="truth", title=title)
    if n <= 25:  # beyond that the numbers no longer fit in their cells
        for (i, j), v in np.ndenumerate(share):
            if v >= 0.005:
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "black")
    fig.tight_layout()
    return save(fig, out / "confusion.png")


def sample_grid(triples: Sequence[Triple], gap: int = GAP) -> np.ndarray:
    """Rows of image | truth | prediction tiles on white, every tile at its own pixel size.

    Nothing is resampled: a downscaled mask (even with NEAREST) drops whole rows and columns
    of pixels, and a class drawn in thin or scattered pixels can vanish from it. Rows of
    different sizes (ADE20K) are left-aligned on a white background as wide as the widest.
    """
    rows = []
    for triple in triples:
        spacer = np.full((triple[0].shape[0], gap, 3), 255, np.uint8)
        rows.append(np.concatenate([triple[0], spacer, triple[1], spacer, triple[2]], axis=1))
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    rows = [part for row in rows for part in (row, np.full((gap, width, 3), 255, np.uint8))][:-1]
    return np.concatenate(rows, axis=0)


def plot_samples(grid: np.ndarray, classes: Sequence[str], palette: Sequence[Sequence[int]], out: Path) -> Path:
    """The grid pixel for pixel (no resampling): axes placed in pixel units, titles above, a legend of ``classes`` right."""
    from matplotlib.patches import Patch

    h, w = grid.shape[:2]
    fig_w, fig_h = w + SAMPLES_RIGHT, h + SAMPLES_TOP
    fig = new_figure((fig_w + 0.01) / DPI, (fig_h + 0.01) / DPI)  # +0.01 px: no size lost to float truncation
    ax = fig.add_axes((0, 0, w / fig_w, h / fig_h))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    for k, name in enumerate(("image", "truth", "prediction")):
        fig.text((k + 0.5) * w / 3 / fig_w, (h + 4) / fig_h, name, ha="center", va="bottom", fontsize=9)
    handles = [Patch(color=np.asarray(c) / 255, label=n) for n, c in zip(classes, palette)]
    fig.legend(handles=handles, loc="upper right", fontsize=7, frameon=False)
    return save(fig, out / "samples.png")


# ---------------------------------------------------------------------------------------------- steps
def plot_curves(records: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Everything metrics.jsonl alone can show."""
    written = [plot_loss(records, out), plot_lr(records, out)]
    vals = of_type(records, "val")
    if not vals:
        logger.warning("metrics.jsonl holds no validation record yet: no miou.png, class_iou.png")
        return written
    return written + [plot_miou(vals, out), plot_class_iou(vals, out)]


def checkpoint_path(run: Path, name: str) -> Path:
    """A bare file name is looked up in the run folder; anything with a folder part is a path."""
    path = Path(name)
    return run / path if path.parent == Path(".") else path


def plot_from_checkpoint(args: argparse.Namespace, run: Path, out: Path) -> list[Path]:
    """confusion.png and samples.png: the saved JSON where it fits, else one pass of the checkpoint over the split."""
    path = checkpoint_path(run, args.checkpoint)
    if not path.is_file():
        logger.warning("%s: checkpoint not found; no confusion.png, samples.png (pass --checkpoint)", path)
        return []
    model, cfg, ckpt = restore(str(path), args.set)
    split = args.split or cfg.data.val_split
    title = f"{cfg.model.name}, {cfg.data.name} {split}"
    saved = saved_confusion(path, split)
    written = [plot_confusion(*saved, out, f"{title} (rows: truth)")] if saved else []
    try:
        dataset = build_dataset(cfg.data, split, eval_transforms(cfg.augment))
    except DataError as exc:  # the one warning: curves (and a saved matrix) are all this machine can draw
        skipped = "samples.png" if saved else "confusion.png, samples.png"
        logger.warning("dataset not available (%s); no %s (point --set data.root=… at a local copy)", exc, skipped)
        return written
    check_classes(ckpt, dataset.CLASSES, cfg.data.name, path)
    score = saved is None and dataset.has_masks
    if saved is None and not score:
        logger.warning("split '%s' has no masks: no confusion.png", split)
    images = max(args.images, 0)
    if not score and not images:
        return written
    # Scoring needs the whole split; samples alone need only the images evaluate() would keep from it.
    subset = dataset if score else Subset(dataset, spread(len(dataset), images))
    device = resolve_device(cfg.train.device)
    model, precision = ready_for_inference(model, cfg, device)  # as validate.py
    loader = DataLoader(subset, cfg.data.val_batch_size, num_workers=apply_budget(cfg.train.threads, cfg.data.num_workers, device).workers)
    confusion, kept = evaluate(model, loader, dataset.num_classes, dataset.IGNORE_INDEX, device, images,
                               cfg.infer, precision.amp)  # fmt: skip
    if score:
        written.append(plot_confusion(confusion.mat.cpu().numpy(), ckpt["classes"], out, f"{title} (rows: truth)"))
    if kept:
        # the legend lists only the classes shown: 150 ADE20K entries would not fit beside 4 rows
        shown = sorted({int(c) for _, truth, pred in kept for c in (*truth.unique(), *pred.unique())} & set(range(dataset.num_classes)))
        grid = sample_grid(colour_triples(kept, cfg, ckpt["palette"]))
        written.append(plot_samples(grid, [ckpt["classes"][c] for c in shown], [ckpt["palette"][c] for c in shown], out))
    return written


def colour_triples(kept: Sequence[tuple[Any, Any, Any]], cfg: Config, palette: Sequence[Sequence[int]]) -> list[Triple]:
    """evaluate()'s (normalised image, truth ids, predicted ids) tensors → RGB arrays, in the checkpoint's palette."""
    return [(denormalize(image.numpy(), cfg.augment.mean, cfg.augment.std), colorize(truth.numpy(), palette),
             colorize(pred.numpy(), palette)) for image, truth, pred in kept]  # fmt: skip


def plot_run(args: argparse.Namespace) -> int:
    new_figure(1, 1)  # fail first, in one line, when matplotlib is missing
    run = Path(args.run)
    records = read_metrics(run)
    out = Path(args.out) if args.out else run / "plots"
    writable_dir(out, "plots folder")
    out.mkdir(parents=True, exist_ok=True)
    written = plot_curves(records, out) + plot_from_checkpoint(args, run, out)
    print(f"{len(written)} plots in {out}: {', '.join(p.name for p in written)}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_script(plot_run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
