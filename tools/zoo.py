"""Turn a training checkpoint into a model-zoo file, then score the file itself and record the result in it.

    python tools/zoo.py runs/enet_camvid/best.pt --out zoo/enet_camvid.pt --data-root ../shared/data/CamVid

A zoo file is what ``validate.py`` and ``test.py`` need and nothing else: the validated weights
(the EMA copy when the run kept one) stored in half precision (``--dtype``; fp16 halves the file and
moves ENet's CamVid mIoU by hundredths of a point), the run's recipe with ``data.root`` set back to
``--recipe-root`` and ``train.amp`` / ``train.channels_last`` back to ``auto`` (each machine takes its
own numeric path), the class names and palette. No optimiser state: it cannot be resumed, only used
or fine-tuned (``train.init_from``).

The exported file is then scored with ``validate.py`` on ``--split`` of the dataset at ``--data-root``,
and the numbers (mIoU, pixel accuracy, per-class IoU, the numeric path that scored them) are stored
in the file under ``record``: ``tests/test_zoo.py`` holds every zoo file to its record. The Markdown
printed at the end is the file's entry for ``zoo/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/zoo.py` from anywhere

from semseg.checkpoint import FORMAT_VERSION, load_checkpoint, save_atomic, validated_weights  # noqa: E402
from semseg.cli import run_script  # noqa: E402
from semseg.errors import CheckpointError  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
logger = logging.getLogger("zoo")


def zoo_config(config: dict[str, Any], recipe_root: str) -> dict[str, Any]:
    """The run's config as a user starts from it: the recipe's data root, per-machine numeric path, no resume."""
    config = json.loads(json.dumps(config))  # deep copy of plain data
    config["data"]["root"] = recipe_root
    config["train"] |= {"amp": "auto", "channels_last": "auto", "resume": None, "init_from": None}
    return config


def export(source: Path, out: Path, dtype: torch.dtype, recipe_root: str) -> dict[str, Any]:
    """Write the zoo file for ``source``; returns what was written."""
    ckpt = load_checkpoint(source)
    weights, _ = validated_weights(ckpt)
    state = ckpt.get("state") or {}  # train.py's TrainState: epoch and iteration the weights were saved at
    if not ckpt.get("config") or not ckpt.get("classes") or not ckpt.get("palette"):
        raise CheckpointError(f"{source}: holds no config, class list or palette (was it written by train.py?)")
    entry = {
        "format_version": FORMAT_VERSION,
        "model": {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()},
        "config": zoo_config(ckpt["config"], recipe_root),
        "classes": list(ckpt["classes"]),
        "palette": [list(c) for c in ckpt["palette"]],
        "epoch": state.get("epoch"),
        "source": {"checkpoint": str(source), "epoch": state.get("epoch"), "iteration": state.get("iteration"),
                   "val_miou_in_training": (ckpt.get("metrics") or {}).get("miou")},  # fmt: skip
    }
    save_atomic(entry, out)
    return entry


def score(out: Path, data_root: str, split: str) -> dict[str, Any]:
    """validate.py on the zoo file itself (what a user will run), as a record for the file."""
    import validate  # the script at the repository root

    with tempfile.TemporaryDirectory() as tmp:
        metrics_path = Path(tmp) / "metrics.json"
        rc = validate.main(["--checkpoint", str(out), "--split", split, "--set", f"data.root={data_root}", "--out", str(metrics_path)])
        if rc != 0:
            raise CheckpointError(f"{out}: validate.py failed (exit {rc}); the file was written but holds no record")
        metrics = json.loads(metrics_path.read_text())
    from semseg.config import config_from_dict
    from semseg.precision import resolve_precision

    cfg = config_from_dict(torch.load(out, map_location="cpu", weights_only=False)["config"])
    path = resolve_precision(cfg.train.amp, cfg.train.channels_last, torch.device("cpu"), cfg.model.name)
    return {"split": split, "miou": metrics["miou"], "pixel_acc": metrics["pixel_acc"], "iou": metrics["iou"],
            "numeric_path": path.describe(), "torch": torch.__version__}  # fmt: skip


def readme_entry(out: Path, entry: dict[str, Any]) -> str:
    record = entry["record"]
    rows = "\n".join(f"| {name} | {100 * iou:.2f} |" for name, iou in record["iou"].items())
    return (f"### {out.name}\n\n{entry['config']['model']['name']} on {entry['config']['data']['name']} "
            f"'{record['split']}': **{100 * record['miou']:.2f} % mIoU**, pixel accuracy {100 * record['pixel_acc']:.2f} % "
            f"(epoch {entry['epoch']}, {out.stat().st_size / 2**20:.2f} MiB)\n\n| class | IoU (%) |\n|---|---:|\n{rows}\n")  # fmt: skip


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a train.py checkpoint (e.g. runs/enet_camvid/best.pt)")
    parser.add_argument("--out", type=Path, required=True, help="the zoo file to write (e.g. zoo/enet_camvid.pt)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="storage of the float weights (default fp16)")
    parser.add_argument("--data-root", required=True, help="the dataset to score the file on")
    parser.add_argument("--split", default="val", help="the split to score (default val)")
    parser.add_argument("--recipe-root", default="data/CamVid", help="data.root stored in the file (default: the recipes' data/CamVid)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    entry = export(args.checkpoint, args.out, DTYPES[args.dtype], args.recipe_root)
    entry["record"] = score(args.out, args.data_root, args.split)
    save_atomic(entry, args.out)
    print(readme_entry(args.out, entry))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_script(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
