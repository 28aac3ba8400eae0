"""What ``train.compile`` (torch.compile, inductor) buys per model: compile time against steady step time.

    python bench/compile.py --models enet erfnet linknet fcn8s --sizes 360x480 --batch 2 --threads 2
    python bench/compile.py --models enet --json doc/results/compile_cpu.json

For each model, one eager and one compiled copy (same weights, same input, each in the numeric
path ``train.amp: auto`` resolves to on this device) run the training step of ``bench/models.py``:

- compile: with an empty inductor cache (``--warm-cache`` keeps the usual one), wall time of the compiled copy's first step (tracing, inductor code generation and the
  C++/Triton builds, forward and backward) minus one eager step;
- eager / compiled: median step time afterwards, the two taking turns so that load from other
  processes hits both alike; speed-up = eager / compiled;
- break-even: the steps after which the compile time is paid back (none when compiled is slower),
  to hold against a real run's length (ENet on CamVid: 36 steps per epoch, 200 epochs).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/compile.py` from anywhere

from bench.models import describe_device, interleaved_ms, make_train_step, parse_size, timed  # noqa: E402
from semseg.precision import resolve_precision  # noqa: E402
from semseg.registry import MODELS  # noqa: E402


def measure(name: str, size: tuple[int, int], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One model: compile time, eager and compiled steady step times, speed-up and break-even."""
    h, w = size
    precision = resolve_precision("auto", "auto", device, name)
    memory_format = torch.channels_last if precision.channels_last else torch.contiguous_format
    amp = None if precision.amp == "off" else precision.amp
    eager = MODELS.build(name, num_classes=args.num_classes).to(device, memory_format=memory_format).train()
    compiled = torch.compile(copy.deepcopy(eager))
    x = torch.randn(args.batch, 3, h, w, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, args.num_classes, (args.batch, h, w), device=device)
    steps = {"eager": make_train_step(eager, x, y, amp), "compiled": make_train_step(compiled, x, y, amp)}
    steps["eager"]()  # warm the eager path so the subtraction below is a steady step
    eager_once = timed(steps["eager"], device)
    first = timed(steps["compiled"], device)
    times = interleaved_ms(steps, device, args.warmup, args.repeat)
    eager_ms, compiled_ms = statistics.median(times["eager"]), statistics.median(times["compiled"])
    compile_s = max(0.0, first - eager_once)
    gain_s = (eager_ms - compiled_ms) / 1e3
    return {"model": name, "size": [h, w], "batch": args.batch, "path": precision.describe(),
            "compile_s": round(compile_s, 1), "eager_ms": round(eager_ms, 1), "compiled_ms": round(compiled_ms, 1),
            "speedup": round(eager_ms / compiled_ms, 3),
            "break_even_steps": round(compile_s / gain_s) if gain_s > 0 else None,
            "eager_ms_all": [round(t, 1) for t in times["eager"]], "compiled_ms_all": [round(t, 1) for t in times["compiled"]]}  # fmt: skip


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | size | batch | compile (s) | eager step (ms) | compiled step (ms) | speed-up | break-even (steps) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['size'][0]}×{r['size'][1]} | {r['batch']} | {r['error']} |||||")
            continue
        even = "never" if r["break_even_steps"] is None else str(r["break_even_steps"])
        lines.append(f"| {r['model']} | {r['size'][0]}×{r['size'][1]} | {r['batch']} | {r['compile_s']:.0f} | {r['eager_ms']:.0f} "
                     f"| {r['compiled_ms']:.0f} | {r['speedup']:.2f}× | {even} |")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["enet", "erfnet", "linknet", "fcn8s"], help="registered names")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(360, 480)], metavar="HxW")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="timed steps of each copy (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each copy after the compile")
    parser.add_argument("--num-classes", type=int, default=11)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument("--warm-cache", action="store_true", help="keep inductor's on-disk cache (default: a fresh one)")
    parser.add_argument("--json", type=Path, help="write every number and the device description here")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if not args.warm_cache:  # what a fresh machine pays: inductor's on-disk caches would hide most of the compile
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="semseg-inductor-")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        for name in args.models:
            print(f"compiling {name} at {size[0]}x{size[1]} …", file=sys.stderr, flush=True)
            start = time.perf_counter()
            try:
                rows.append(measure(name, size, args, device))
            except Exception as exc:  # noqa: BLE001 - a model inductor cannot compile is a row, not the end of the run
                rows.append({"model": name, "size": list(size), "batch": args.batch,
                             "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"})  # fmt: skip
            print(f"  {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
            torch._dynamo.reset()  # each model compiles from a clean cache
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": describe_device(device), "argv": sys.argv[1:] if argv is None else argv,
                                         "rows": rows}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
