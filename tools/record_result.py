"""Record a finished run in doc/results/<dataset>.json (and print the Markdown row).

    python tools/record_result.py runs/enet_camvid_cpu --device "CPU, 2 cores" \
        --command "python train.py --config configs/enet_camvid.yml --set ..."

Reads the run folder's ``config.yml`` and ``metrics.jsonl``: the best validation
record (the one ``best.pt`` holds), the epochs, and the wall time summed over
epochs. One entry per run name; recording again replaces it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/record_result.py` from anywhere

from semseg.config import read_yaml  # noqa: E402
from semseg.errors import SemsegError, os_reason  # noqa: E402
from semseg.runlog import read_json, read_metrics  # noqa: E402


def summarise(run: Path) -> dict:
    try:
        cfg = read_yaml(run / "config.yml")
        records = read_metrics(run)  # the reader plot_run.py uses: a resume's repeated records count once
    except SemsegError as exc:
        raise SystemExit(f"error: {exc}") from None
    vals = [r for r in records if r["type"] == "val"]
    epochs = [r for r in records if r["type"] == "epoch"]
    if not vals:
        raise SystemExit(f"{run}/metrics.jsonl: no validation record")
    best = max(vals, key=lambda r: r["miou"])
    return {
        "run": run.name,
        "model": cfg["model"]["name"],
        "dataset": cfg["data"]["name"],
        "split": cfg["data"]["val_split"],
        "epochs": max(r["epoch"] for r in epochs),
        "best_epoch": best["epoch"],
        "val_miou": round(100 * best["miou"], 2),
        "pixel_acc": round(100 * best["pixel_acc"], 2),
        "per_class_iou": {k: (None if v != v else round(100 * v, 2)) for k, v in best["iou"].items()},
        "wall_time_min": round(sum(r["seconds"] for r in epochs) / 60, 1),
        "crop": cfg["augment"]["crop"],
        "batch_size": cfg["data"]["batch_size"],
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--device", required=True, help='e.g. "CPU, 2 cores (no GPU)"')
    parser.add_argument("--command", required=True, help="the exact command that trained it")
    parser.add_argument("--config", help="the recipe file the command used")
    parser.add_argument("--note", default="", help="what differs from the paper's recipe")
    parser.add_argument("--wall-time-min", type=float,
                        help="replace the summed epoch times (runs stopped mid-epoch by code before epoch_seconds was saved "
                             "logged only the part after the resume)")  # fmt: skip
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).resolve().parents[1] / "doc" / "results",
                        help="where <dataset>.json lives (default: doc/results)")
    args = parser.parse_args(argv)
    entry = summarise(args.run) | {"device": args.device, "command": args.command, "config": args.config, "note": args.note}
    if args.wall_time_min is not None:
        entry["wall_time_min"] = args.wall_time_min
    out = args.results_dir / f"{entry['dataset']}.json"
    try:
        entries = read_json(out) if out.is_file() else []
    except SemsegError as exc:
        raise SystemExit(f"error: {exc}") from None
    entries = [e for e in entries if e["run"] != entry["run"]] + [entry]
    try:
        out.write_text(json.dumps(entries, indent=1) + "\n")
    except OSError as exc:
        raise SystemExit(f"error: {out}: cannot write: {os_reason(exc)}") from None
    print(f"| {entry['model']} | {entry['val_miou']:.1f} | {entry['epochs']} | {entry['crop']} | {entry['device']} | {entry['wall_time_min']} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
