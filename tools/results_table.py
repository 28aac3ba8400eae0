"""One table per dataset that answers "how accurate, how big, how fast" for every model.

    python tools/results_table.py                                   # every doc/results/bench_*.json
    python tools/results_table.py --update doc/results.md
    python tools/results_table.py --trained-only --update README.md
    python tools/results_table.py --bench my_gpu.json --models enet erfnet

Joins three sources that are each written by a tool, so the table is never typed by hand:
the trained runs in ``doc/results/<dataset>.json`` (``tools/record_result.py``), the
measurements in one or more ``bench/models.py --json`` files (one column group per
device and batch; files of the same device and batch are merged, later rows winning) and the papers' CamVid numbers kept at each model's registration
(``paper_camvid_miou``). Parameters and GFLOPs are counted on the meta device here.
``--update FILE`` replaces the text between ``<!-- results-table -->`` and
``<!-- /results-table -->`` in FILE (a README can hold its own subset).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/results_table.py` from anywhere

from semseg.errors import SemsegError  # noqa: E402
from semseg.models.__main__ import measure  # noqa: E402
from semseg.registry import MODELS  # noqa: E402
from semseg.runlog import read_json  # noqa: E402

size_and_cost = measure  # (params, GFLOPs), cached: pure, and ~1 s a call
START, END = "<!-- results-table -->", "<!-- /results-table -->"
SIZES = ((360, 480), (512, 1024))


def load_json(path: Path) -> Any:
    try:
        return read_json(path)
    except SemsegError as exc:
        raise SystemExit(f"error: {exc}") from None


def best_runs(entries: list[dict]) -> dict[str, dict]:
    """The run with the highest val mIoU per model (several runs of one model may be recorded)."""
    best: dict[str, dict] = {}
    for entry in entries:
        if entry["model"] not in best or entry["val_miou"] > best[entry["model"]]["val_miou"]:
            best[entry["model"]] = entry
    return best


def device_label(bench: dict) -> str:
    info = bench["device"]
    if info["device"].startswith("cuda"):
        return f"GPU ({info.get('gpu', 'CUDA')})"
    return f"CPU ({info['threads']} threads)"


def bench_rows(bench: dict) -> dict[str, dict]:
    """Our models' rows at 360×480 (the CamVid size), by model name; peers are left out."""
    return {r["model"]: r for r in bench["results"]
            if r.get("impl") == "semseg" and tuple(r["size"]) == SIZES[0] and "compared_in" not in r}  # fmt: skip


def merge_benches(benches: list[dict]) -> list[dict]:
    """One bench per (device, batch): files measured alike are one column group, a later file's row for a
    model replacing an earlier one's (a refresh of some models need not rerun them all)."""
    merged: dict[tuple[str, int], dict] = {}
    for bench in benches:
        key = (device_label(bench), bench["settings"]["batch"])
        if key not in merged:
            merged[key] = {**bench, "results": list(bench["results"])}
            continue
        fresh = {(r["model"], tuple(r["size"])) for r in bench["results"]}
        kept = [r for r in merged[key]["results"] if (r["model"], tuple(r["size"])) not in fresh]
        merged[key]["results"] = kept + list(bench["results"])
    return list(merged.values())


def fmt(value: Optional[float], spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(models: list[str], runs: dict[str, dict], benches: list[dict]) -> str:
    batch = {b["settings"]["batch"] for b in benches}
    head = ["model", "CamVid val mIoU (run)", "paper CamVid mIoU (test)", "params (M)"]
    head += [f"GFLOPs {h}×{w}" for h, w in SIZES]
    per_bench = [bench_rows(b) for b in benches]
    throughput = [next((r["throughput_batch"] for r in rows.values() if "images_per_s" in r), None) for rows in per_bench]
    for bench, tb in zip(benches, throughput):
        label, b = device_label(bench), bench["settings"]["batch"]
        head += [f"{label} forward ms (b=1)", f"{label} train step ms (b={b})", f"{label} train peak MiB (b={b})"]
        head += [f"{label} images/s (b={tb})"] if tb else []
    lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    for name in models:
        run = runs.get(name)
        paper = MODELS.meta(name).get("paper_camvid_miou")
        cells = [f"`{name}`",
                 f"{run['val_miou']:.1f} ({run['epochs']} ep, {run['device'].split(',')[0]})" if run else "–",
                 fmt(paper[0] if paper else None, ".1f")]  # fmt: skip
        counts = [size_and_cost(name, 11, h, w) for h, w in SIZES]
        cells.append(f"{counts[0][0] / 1e6:.2f}")
        cells += [f"{gflops:.1f}" for _, gflops in counts]
        for rows, tb in zip(per_bench, throughput):
            row = rows.get(name, {})
            cells += [fmt(row.get("fwd_ms"), ".0f"), fmt(row.get("train_ms"), ".0f"), fmt(row.get("train_peak_mib"), ".0f")]
            cells += [fmt(row.get("images_per_s"), ".0f")] if tb else []
        lines.append("| " + " | ".join(cells) + " |")
    if len(batch) > 1:
        lines.append(f"\nTraining-step batches differ between the bench files: {sorted(batch)}.")
    return "\n".join(lines)


def update(path: Path, text: str) -> None:
    """Replace the block between the markers, keeping the markers; refuse if they are missing."""
    content = path.read_text()
    if content.count(START) != 1 or content.count(END) != 1 or content.index(START) > content.index(END):
        raise SystemExit(f"error: {path}: needs exactly one '{START}' followed by one '{END}'")
    before, rest = content.split(START)
    _, after = rest.split(END)
    path.write_text(f"{before}{START}\n{text}\n{END}{after}")


def main(argv: Optional[list[str]] = None) -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=root / "doc" / "results" / "camvid.json")
    parser.add_argument("--bench", type=Path, action="append",
                        help="a bench/models.py --json file (repeatable; default: every doc/results/bench_*.json)")
    parser.add_argument("--models", nargs="+", help="default: every registered model")
    parser.add_argument("--trained-only", action="store_true", help="only models with a recorded run")
    parser.add_argument("--update", type=Path, help="write the table between the markers in this file")
    args = parser.parse_args(argv)
    runs = best_runs(load_json(args.results)) if args.results.is_file() else {}
    bench_files = args.bench if args.bench is not None else sorted((root / "doc" / "results").glob("bench_*.json"))
    benches = merge_benches([load_json(p) for p in bench_files])
    unknown = [n for n in args.models or [] if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choices: {', '.join(MODELS.names())}")
    models = args.models or MODELS.names()
    if args.trained_only:
        models = sorted((n for n in models if n in runs), key=lambda n: -runs[n]["val_miou"])
    text = table(models, runs, benches)
    if args.update:
        update(args.update, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
