"""Soak: thousands of training iterations, stopped and resumed K times, checked for leaks and exactness.

    OMP_NUM_THREADS=1 python bench/soak.py --iterations 3000 --cycles 5 --json soak.json

Trains on the built-in synthetic scenes twice, in this one process:

1. straight through, ``--iterations`` optimiser steps;
2. the same run stopped ``--cycles - 1`` times, at about evenly spaced iterations
   (mid-epoch and at an epoch's last step, alternately), by a real SIGTERM (train.py
   saves a resumable ``last.pt`` and returns 130), each time resumed with
   ``train.py --resume last.pt``.

Before every epoch it samples the process: resident memory (``VmRSS`` from
``/proc/self/status``; the peak from ``getrusage`` elsewhere), open file descriptors
and threads; after every cycle also the number of Python objects the garbage
collector tracks. Because every cycle runs in the same process, whatever one cycle
leaks (a model, a loader, an open file, a visdom thread) shows up in the next.

The verdict is PASS when (a) the resumed run ends with the straight run's weights
and optimiser state bit for bit and the same metrics.jsonl records (val, epoch and
train; wall-clock seconds aside), and (b) memory does not grow with epochs: the
least-squares RSS slope over the epochs after the first ``--warmup`` fraction stays
under ``--max-slope-kib`` KiB per epoch, and the counts of open descriptors and
threads are the same at every epoch after it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import io
import json
import logging
import os
import platform
import resource
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as `python bench/soak.py` from anywhere

import train  # noqa: E402

CONFIG = REPO / "configs" / "synthetic_tiny.yml"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3000, help="optimiser steps in all (default 3000)")
    parser.add_argument("--cycles", type=int, default=5, help="runs the resumed training is split into (default 5)")
    parser.add_argument("--size", type=int, nargs=2, default=(32, 48), metavar=("H", "W"), help="image size (default 32 48)")
    parser.add_argument("--train-images", type=int, default=64, help="images per epoch (default 64)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--val-every", type=int, default=25, help="epochs between validations (default 25)")
    parser.add_argument("--model", default="enet")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of epochs left out of the RSS slope (default 0.2)")
    parser.add_argument("--max-slope-kib", type=float, default=16.0, help="largest RSS growth per epoch that passes (default 16)")
    parser.add_argument("--workdir", help="where the two run folders go (default: a temporary folder, removed)")
    parser.add_argument("--json", help="write every sample and the verdict here")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides for both runs")
    return parser.parse_args(argv)


def sample_process() -> dict[str, int]:
    """Resident memory (KiB), open file descriptors and live threads of this process, now."""
    rss = None
    status = Path("/proc/self/status")
    if status.is_file():
        rss = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
    else:  # macOS & co: the peak is the best there is (bytes there, KiB on Linux)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
    fds = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else -1
    return {"rss_kib": rss, "fds": fds, "threads": threading.active_count()}


def instrumented(real: Callable, samples: list[dict], cycle: int, stop_at: Optional[int]) -> Callable:
    """``train_one_epoch`` that samples the process before each epoch and sends SIGTERM once ``stop_at`` steps are done."""
    signature = inspect.signature(real)

    def train_one_epoch(*args: Any, **kwargs: Any) -> bool:
        bound = signature.bind(*args, **kwargs)
        state, should_stop = bound.arguments["state"], bound.arguments.get("should_stop", lambda: False)
        samples.append({"cycle": cycle, "epoch": state.epoch, "iteration": state.iteration, "time": time.time(), **sample_process()})

        def stop() -> bool:
            if stop_at is not None and state.iteration >= stop_at:
                signal.raise_signal(signal.SIGTERM)  # train.py's own handler: finish the step, save last.pt, return 130
            return should_stop()

        bound.arguments["should_stop"] = stop
        return real(*bound.args, **bound.kwargs)

    return train_one_epoch


def run_cycles(args: argparse.Namespace, run_root: Path, stops: list[int], samples: list[dict]) -> tuple[Path, list[dict]]:
    """Train to the end, stopping after each iteration in ``stops`` and resuming; returns (run folder, per-cycle rows)."""
    steps_per_epoch = args.train_images // args.batch
    epochs = -(-args.iterations // steps_per_epoch)
    overrides = [
        f"model.name={args.model}", f"data.params.size=[{args.size[0]},{args.size[1]}]",
        f"data.params.num_images={{train: {args.train_images}, val: 4, test: 1}}", "data.num_workers=0",
        f"data.batch_size={args.batch}", f"augment.crop=[{args.size[0]},{args.size[1]}]", "schedule.warmup_iters=5",
        "log.visdom=false", f"log.print_every={steps_per_epoch}", f"train.epochs={epochs}",
        f"train.val_every={args.val_every}", f"log.run_dir={run_root}", *args.set,
    ]  # fmt: skip
    last = run_root / CONFIG.stem / "last.pt"
    real, rows = train.train_one_epoch, []
    try:
        for cycle, stop_at in enumerate(stops + [None]):
            train.train_one_epoch = instrumented(real, samples, cycle, stop_at)
            start = time.perf_counter()
            argv = ["--config", str(CONFIG), "--set", *overrides] if cycle == 0 else ["--resume", str(last)]
            with contextlib.redirect_stdout(io.StringIO()):  # the per-run metrics table
                rc = train.main(argv)
            expected = 0 if stop_at is None else 130
            if rc != expected:
                raise RuntimeError(f"cycle {cycle}: train.py returned {rc}, expected {expected}")
            gc.collect()
            end = {"cycle": cycle, "epoch": None, "iteration": None, "time": time.time(), **sample_process(), "objects": len(gc.get_objects())}
            samples.append(end)
            state = torch.load(last, map_location="cpu", weights_only=False)["state"]
            rows.append({"cycle": cycle, "iteration": state["iteration"], "epoch": state["epoch"], "seconds": round(time.perf_counter() - start, 1),
                         "rss_mib": round(end["rss_kib"] / 1024, 1), "fds": end["fds"], "threads": end["threads"],
                         "objects": end["objects"]})  # fmt: skip
    finally:
        train.train_one_epoch = real
    return run_root / CONFIG.stem, rows


def records(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def identical(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of nested checkpoint contents (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two points)."""
    if len(points) < 2:
        return 0.0
    mx, my = sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def memory_verdict(samples: list[dict], warmup: float, max_slope: float) -> dict[str, Any]:
    """RSS slope per epoch after warm-up, and whether descriptors and threads came back to where they were."""
    per_epoch = [s for s in samples if s["epoch"] is not None]
    last_epoch = max(s["epoch"] for s in per_epoch)
    settled = [(s["epoch"], s["rss_kib"]) for s in per_epoch if s["epoch"] >= warmup * last_epoch]
    rise = slope(settled)
    settled_rss = [r for _, r in settled]
    # taken at the same point of every epoch (metrics.jsonl open, no save under way): any change is a leak
    fds = sorted({s["fds"] for s in per_epoch if s["epoch"] >= warmup * last_epoch})
    threads = sorted({s["threads"] for s in per_epoch if s["epoch"] >= warmup * last_epoch})
    return {
        "rss_slope_kib_per_epoch": round(rise, 2), "rss_first_mib": round(per_epoch[0]["rss_kib"] / 1024, 1),
        "rss_settled_min_mib": round(min(settled_rss) / 1024, 1), "rss_settled_max_mib": round(max(settled_rss) / 1024, 1),
        "rss_end_mib": round(samples[-1]["rss_kib"] / 1024, 1), "fds": fds, "threads": threads,
        "ok": rise <= max_slope and len(fds) == 1 and len(threads) == 1,
    }  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| run | cycle | ends at iteration | epoch | seconds | RSS MiB | fds | threads | Python objects |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in rows:
        lines.append(f"| {row['run']} | {row['cycle']} | {row['iteration']} | {row['epoch']} | {row['seconds']} | "
                     f"{row['rss_mib']} | {row['fds']} | {row['threads']} | {row['objects']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.cycles < 1 or args.iterations < args.cycles or args.train_images < args.batch:
        raise SystemExit("soak: need --iterations >= --cycles >= 1 and --train-images >= --batch")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")  # train.py's INFO is per epoch: too much
    torch.set_num_threads(args.threads)
    steps_per_epoch = args.train_images // args.batch
    total = -(-args.iterations // steps_per_epoch) * steps_per_epoch  # whole epochs
    # about evenly spaced, alternately half-way through an epoch and at an epoch's last step: both resume paths
    ends = [round(total * k / args.cycles / steps_per_epoch) * steps_per_epoch for k in range(1, args.cycles)]
    stops = [end - (k % 2) * (steps_per_epoch // 2) for k, end in enumerate(ends, start=1)]
    if stops != sorted(set(stops)) or (stops and not 0 < stops[0] <= stops[-1] < total):
        raise SystemExit(f"soak: {args.cycles} cycles do not fit in {total} iterations; lower --cycles")
    with tempfile.TemporaryDirectory(prefix="semseg-soak-") as scratch:
        root = Path(args.workdir or scratch)
        straight_samples: list[dict] = []
        cycled_samples: list[dict] = []
        start = time.perf_counter()
        straight, straight_rows = run_cycles(args, root / "straight", [], straight_samples)
        resumed, cycled_rows = run_cycles(args, root / "resumed", stops, cycled_samples)
        seconds = time.perf_counter() - start
        a = torch.load(straight / "last.pt", map_location="cpu", weights_only=False)
        b = torch.load(resumed / "last.pt", map_location="cpu", weights_only=False)
        same = {
            "model": identical(a["model"], b["model"]), "optimizer": identical(a["optimizer"], b["optimizer"]),
            "state": a["state"] == b["state"], "metrics_jsonl": records(straight) == records(resumed),
            "val_records": sum(r["type"] == "val" for r in records(resumed)),
        }  # fmt: skip
    memory = memory_verdict(cycled_samples, args.warmup, args.max_slope_kib)
    memory_straight = memory_verdict(straight_samples, args.warmup, args.max_slope_kib)
    ok = same["model"] and same["optimizer"] and same["state"] and same["metrics_jsonl"] and memory["ok"] and memory_straight["ok"]
    rows = [{"run": "straight", **r} for r in straight_rows] + [{"run": "resumed", **r} for r in cycled_rows]
    print(table(rows))
    print(f"\n{total} iterations ({total // steps_per_epoch} epochs of {steps_per_epoch}), {args.model} at "
          f"{args.size[0]}×{args.size[1]}, batch {args.batch}, {args.threads} thread(s); stops after iterations "
          f"{stops}; {seconds:.0f} s in all")  # fmt: skip
    for name, mem in (("straight", memory_straight), ("resumed", memory)):
        print(f"RSS {name}: {mem['rss_first_mib']} MiB at epoch 0, {mem['rss_settled_min_mib']}–{mem['rss_settled_max_mib']} MiB "
              f"after warm-up, slope {mem['rss_slope_kib_per_epoch']:+.2f} KiB/epoch (limit {args.max_slope_kib}); "
              f"open fds {'/'.join(map(str, mem['fds']))}, threads {'/'.join(map(str, mem['threads']))} "
              f"at every epoch after warm-up")  # fmt: skip
    print(f"resumed vs straight: weights {'identical' if same['model'] else 'DIFFER'}, optimiser "
          f"{'identical' if same['optimizer'] else 'DIFFERS'}, metrics.jsonl {'identical' if same['metrics_jsonl'] else 'DIFFERS'} "
          f"({same['val_records']} val records)")  # fmt: skip
    print(f"verdict: {'PASS' if ok else 'FAIL'}")
    if args.json:
        result = {
            "config": {k: v for k, v in vars(args).items() if k != "json"}, "iterations": total, "stops": stops,
            "seconds": round(seconds, 1), "cycles": rows, "memory": {"straight": memory_straight, "resumed": memory},
            "identical": same, "verdict": "PASS" if ok else "FAIL",
            "samples": {"straight": straight_samples, "resumed": cycled_samples},
            "host": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                     "threads": args.threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
