"""Per-model cost on this device: parameters, GFLOPs, forward latency, training-step time, peak memory.

    python bench/models.py --models enet erfnet linknet --sizes 360x480 --threads 2 --batch 2 --repeat 5
    python bench/models.py --models linknet pspnet50 --peers --json bench.json
    python bench/models.py --device cuda --amp bf16 --channels-last --sizes 512x1024
    python bench/models.py --models enet fcn8s --sizes 240x320 --fast-path   # fp32/NCHW vs bf16 + channels_last

- GFLOPs: one forward pass at batch 1, counted on the meta device by
  ``semseg.models.__main__.measure`` (a multiply-add = 2 FLOPs).
- forward: median wall time of ``model(x)`` at batch 1 under ``torch.inference_mode``, after warm-up.
- throughput (``--throughput-batch N``): images per second of inference at batch N, from the median
  time of one batch — the serving number on a GPU, where batch 1 leaves it mostly idle.
- train step: median of forward + cross-entropy (on ``out`` and ``aux`` where the model has one)
  + backward + SGD-momentum step at ``--batch``.
- peak memory: what one call adds on top of the memory held before it (the weights):
  activations for the forward; activations, gradients and momentum for the first training step.
  CUDA: ``torch.cuda.max_memory_allocated``. CPU: peak resident set size, read as
  ``VmHWM`` from ``/proc/self/status`` after resetting it through ``/proc/self/clear_refs``
  (and after ``malloc_trim``, so memory freed earlier is not counted as held);
  where that is unavailable, the growth of ``resource.getrusage().ru_maxrss``, which
  can only see a peak above every earlier one. The JSON names the method used.

``--fast-path`` also times each model's training step (and forward) twice, interleaved in the
same run with the same weights and input: fp32/NCHW (today's default without ``auto``) and the
fast path, bf16 autocast + channels_last (fp16 on a CUDA GPU without bf16), and reports
fast/fp32 speed-ups. These ratios are what each family file records as ``CPU_BF16_SPEEDUP`` (read by ``semseg/precision.py``).

``--peers`` times our models against their reference implementations in the same
run, interleaved (ours, theirs, ours, …) so both see the same load, with the same
input, batch, device and threads, and reports ours/theirs. The peers come from
segmentation-models-pytorch (``bench/requirements.txt``), which only accepts
H and W divisible by 32, so comparisons run at the size rounded up to that.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/models.py` from anywhere

from bench._memory import memory_method, peak_mib  # noqa: E402
from bench.peers import NO_PEER, PEERS, Peer, peer_size  # noqa: E402
from semseg.engine import autocast  # noqa: E402
from semseg.losses.criterion import Criterion  # noqa: E402
from semseg.models.__main__ import measure  # noqa: E402
from semseg.registry import MODELS  # noqa: E402

@dataclass(frozen=True)
class Entry:
    """One model to measure: how to build it (real weights, random init) and how to count its FLOPs."""

    label: str
    impl: str
    build: Callable[[], nn.Module]
    params_gflops: Callable[[int, int], tuple[int, float]]



# ---------------------------------------------------------------- timing


def make_forward(model: nn.Module, x: torch.Tensor, amp: Optional[str]) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode(), autocast(x.device, amp):
            model(x)

    return run


def make_train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: Optional[str]) -> Callable[[], None]:
    """One SGD step with the training criterion (``out`` plus every ``aux*`` output, each scored at its own
    size, as in train.py); fp16 goes through a GradScaler as it would in training."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp == "fp16")
    criterion = Criterion(nn.CrossEntropyLoss(), aux_weight=1.0)

    def run() -> None:
        with autocast(x.device, amp):
            out = model(x)
        loss = criterion({k: o.float() for k, o in out.items()}, y)  # fp32 loss outside autocast, as train.py
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return run


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved_ms(fns: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeat: int) -> dict[str, list[float]]:
    """Times in ms, taking turns (a, b, a, b, …) so that load from other processes hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            times[key].append(1e3 * timed(fn, device))
    return times


# ---------------------------------------------------------------- measuring


def meta_params_gflops(build: Callable[[], nn.Module], height: int, width: int) -> tuple[int, float]:
    """``measure`` for a model outside the registry (the peers): shapes only, on the meta device."""
    with torch.device("meta"):
        model = build().eval()
        x = torch.empty(1, 3, height, width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 1e9


def ours(name: str, num_classes: int) -> Entry:
    return Entry(name, "semseg", lambda: MODELS.build(name, num_classes=num_classes),
                 lambda h, w: measure(name, num_classes, h, w))  # fmt: skip


def theirs(peer: Peer, num_classes: int) -> Entry:
    build = lambda: peer.build(num_classes)  # noqa: E731
    return Entry(peer.label, peer.label.split("(")[0].split(".")[0], build, lambda h, w: meta_params_gflops(build, h, w))


def set_mode(models: dict[str, nn.Module], train: bool) -> None:
    for model in models.values():
        model.train(train)


def measure_group(entries: list[Entry], size: tuple[int, int], args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """All numbers for ``entries`` at ``size``; with several entries their timings are interleaved."""
    h, w = size
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x1 = torch.randn(1, 3, h, w, device=device).contiguous(memory_format=fmt)
    xb = torch.randn(args.batch, 3, h, w, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, args.num_classes, (args.batch, h, w), device=device)
    models = {e.label: e.build().to(device, memory_format=fmt) for e in entries}
    rows = {}
    for e in entries:
        params, gflops = e.params_gflops(h, w)
        rows[e.label] = {"model": e.label, "impl": e.impl, "size": [h, w], "batch": args.batch, "params_m": params / 1e6, "gflops": gflops}
    forwards = {k: make_forward(m, x1, args.amp) for k, m in models.items()}
    steps = {k: make_train_step(m, xb, y, args.amp) for k, m in models.items()}
    batched = {}
    if args.throughput_batch:
        xt = torch.randn(args.throughput_batch, 3, h, w, device=device).contiguous(memory_format=fmt)
        batched = {k: make_forward(m, xt, args.amp) for k, m in models.items()}
    for key, model in models.items():  # memory first: the first training step is the one that allocates
        model.eval()
        rows[key]["fwd_peak_mib"] = peak_mib(forwards[key], device)
        model.train()
        rows[key]["train_peak_mib"] = peak_mib(steps[key], device)
    for kind, fns, train in (("fwd", forwards, False), ("train", steps, True), ("batch_fwd", batched, False)):
        set_mode(models, train)
        for key, times in interleaved_ms(fns, device, args.warmup, args.repeat).items():
            rows[key] |= {f"{kind}_ms": statistics.median(times), f"{kind}_ms_all": [round(t, 2) for t in times]}
    for key in batched:
        rows[key] |= {"throughput_batch": args.throughput_batch,
                      "images_per_s": 1e3 * args.throughput_batch / rows[key]["batch_fwd_ms"]}  # fmt: skip
    return list(rows.values())


def fast_amp(device: torch.device) -> str:
    """The fast path's autocast dtype: bf16, except on a CUDA GPU without it (fp16)."""
    return "fp16" if device.type == "cuda" and not torch.cuda.is_bf16_supported() else "bf16"


def measure_fast_path(name: str, size: tuple[int, int], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """fp32/NCHW against bf16 autocast + channels_last for ``name``: same weights, same input, interleaved."""
    h, w = size
    amp = fast_amp(device)
    plain = MODELS.build(name, num_classes=args.num_classes).to(device)
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    xb = torch.randn(args.batch, 3, h, w, device=device)
    y = torch.randint(0, args.num_classes, (args.batch, h, w), device=device)
    x1 = xb[:1].contiguous()
    models = {"fp32": plain, "fast": fast}
    forwards = {"fp32": make_forward(plain, x1, None), "fast": make_forward(fast, x1.contiguous(memory_format=torch.channels_last), amp)}
    steps = {"fp32": make_train_step(plain, xb, y, None),
             "fast": make_train_step(fast, xb.contiguous(memory_format=torch.channels_last), y, amp)}  # fmt: skip
    row: dict[str, Any] = {"model": name, "size": [h, w], "batch": args.batch, "fast": f"{amp} autocast + channels_last"}
    for kind, fns, train in (("fwd", forwards, False), ("train", steps, True)):
        set_mode(models, train)
        times = interleaved_ms(fns, device, args.warmup, args.repeat)
        for key, values in times.items():
            row[f"{key}_{kind}_ms"] = statistics.median(values)
            row[f"{key}_{kind}_ms_all"] = [round(t, 2) for t in values]
        row[f"{kind}_speedup"] = row[f"fp32_{kind}_ms"] / row[f"fast_{kind}_ms"]
    return row


def safe_fast_path(name: str, size: tuple[int, int], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    print(f"measuring {name} fp32 vs fast path at {size[0]}x{size[1]} …", file=sys.stderr, flush=True)
    try:
        return measure_fast_path(name, size, args, device)
    except (RuntimeError, ValueError) as exc:
        return {"model": name, "size": list(size), "batch": args.batch, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    finally:
        gc.collect()


def safe_group(entries: list[Entry], size: tuple[int, int], args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """A model that fails (out of memory, batch 1 with BN on a 1×1 map, …) becomes a row with its error."""
    print(f"measuring {' vs '.join(e.label for e in entries)} at {size[0]}x{size[1]} …", file=sys.stderr, flush=True)
    try:
        return measure_group(entries, size, args, device)
    except (RuntimeError, ValueError) as exc:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return [{"model": e.label, "impl": e.impl, "size": list(size), "batch": args.batch, "error": error} for e in entries]
    finally:
        gc.collect()


def compare(name: str, size: tuple[int, int], args: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[dict]]:
    """Our ``name`` against each of its peers at the peer-compatible size: rows and ours/theirs ratios."""
    rows, comparisons = [], []
    for peer in PEERS[name]:
        psize = peer_size(size)
        pair = safe_group([ours(name, args.num_classes), theirs(peer, args.num_classes)], psize, args, device)
        for row in pair:
            row["compared_in"] = f"{name} vs {peer.label}"
        rows += pair
        mine, other = pair
        ratio = lambda key: mine[key] / other[key] if key in mine and key in other else None  # noqa: E731
        comparisons.append({"ours": name, "theirs": peer.label, "size": list(psize), "requested_size": list(size),
                            "twin": peer.twin, "note": peer.note, "fwd_ratio": ratio("fwd_ms"), "train_ratio": ratio("train_ms"),
                            "params_ratio": ratio("params_m"), "gflops_ratio": ratio("gflops")})  # fmt: skip
    return rows, comparisons


# ---------------------------------------------------------------- output


def describe_device(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    info = {"device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "memory_method": memory_method(device)}  # fmt: skip
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    if device.type == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda}
    return info


def _num(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "-"


def fast_markdown(rows: list[dict[str, Any]], batch: int) -> str:
    """Per model: train step (and forward) fp32/NCHW vs the fast path, and the speed-up."""
    lines = [f"| model | H×W | train step fp32 ms (b={batch}) | train step fast ms | train speed-up | forward fp32 ms (b=1) | forward fast ms | forward speed-up |",
             "|---|---|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['size'][0]}×{r['size'][1]} | failed: {r['error']} |||||| ")
            continue
        lines.append(f"| {r['model']} | {r['size'][0]}×{r['size'][1]} | {r['fp32_train_ms']:.1f} | {r['fast_train_ms']:.1f} | "
                     f"{r['train_speedup']:.2f}× | {r['fp32_fwd_ms']:.1f} | {r['fast_fwd_ms']:.1f} | {r['fwd_speedup']:.2f}× |")  # fmt: skip
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], comparisons: list[dict[str, Any]], batch: int) -> str:
    throughput = any("images_per_s" in r for r in rows)
    lines = [f"| model | impl | H×W | params (M) | GFLOPs | forward ms (b=1) | train step ms (b={batch}) | forward peak MiB | train peak MiB |"
             + (" images/s |" if throughput else ""), "|---|---|---|--:|--:|--:|--:|--:|--:|" + ("--:|" if throughput else "")]  # fmt: skip
    for r in rows:
        cells = [r["model"], r["impl"], f"{r['size'][0]}×{r['size'][1]}", _num(r, "params_m", ".2f"), _num(r, "gflops", ".1f" if r.get("gflops", 0) >= 1 else ".3f"),
                 _num(r, "fwd_ms", ".1f"), _num(r, "train_ms", ".1f"), _num(r, "fwd_peak_mib", ".0f"), _num(r, "train_peak_mib", ".0f")]  # fmt: skip
        cells += [_num(r, "images_per_s", ".1f")] if throughput else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"\n{r['model']} at {r['size'][0]}×{r['size'][1]} failed: {r['error']}" for r in rows if "error" in r]
    if comparisons:
        lines += ["", "| ours | theirs | H×W | twin | forward ours/theirs | train step ours/theirs | GFLOPs ours/theirs | note |",
                  "|---|---|---|---|--:|--:|--:|---|"]  # fmt: skip
        for c in comparisons:
            ratio = lambda k: f"{c[k]:.2f}" if c[k] is not None else "-"  # noqa: E731
            lines.append(f"| {c['ours']} | {c['theirs']} | {c['size'][0]}×{c['size'][1]} | {'yes' if c['twin'] else 'no'} | "
                         f"{ratio('fwd_ratio')} | {ratio('train_ratio')} | {ratio('gflops_ratio')} | {c['note']} |")  # fmt: skip
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not HxW (e.g. 360x480)") from None
    return h, w


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", help="registered names (default: all)")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(360, 480)], metavar="HxW")
    parser.add_argument("--batch", type=int, default=2, help="training-step batch (forward latency is at batch 1)")
    parser.add_argument("--throughput-batch", type=int, default=0, metavar="N",
                        help="also time inference at batch N and report images/s (0: off)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--num-classes", type=int, default=11)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="autocast dtype (CPU: bf16 only)")
    parser.add_argument("--fast-path", action="store_true",
                        help="also time each model fp32/NCHW vs bf16 autocast + channels_last, interleaved, and the speed-up")
    parser.add_argument("--fast-path-only", action="store_true", help="only the --fast-path comparison (skip the full rows)")
    parser.add_argument("--peers", action="store_true", help="also time against the reference implementations (smp)")
    parser.add_argument("--json", type=Path, help="write every number and the device description here")
    args = parser.parse_args(argv)
    unknown = [n for n in args.models or [] if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choices: {', '.join(MODELS.names())}")
    if args.repeat < 1 or args.batch < 1 or args.throughput_batch < 0:
        parser.error("--repeat and --batch must be at least 1, --throughput-batch at least 0")
    return args


def resolve(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available here")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu"))
    if args.amp == "fp16" and device.type != "cuda":
        raise SystemExit("error: --amp fp16 is for CUDA; on CPU use --amp bf16")
    if args.threads:
        torch.set_num_threads(args.threads)
    return device


def save(args: argparse.Namespace, argv: Optional[list[str]], info: dict, rows: list[dict], comparisons: list[dict],
         fast: Optional[list[dict]] = None) -> None:
    """Write ``--json`` (if asked) through a temporary file, so a reader never sees half a file."""
    if not args.json:
        return
    settings = {k: (list(map(list, v)) if k == "sizes" else str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    record = {"device": info, "settings": settings, "command": " ".join(["python", "bench/models.py", *(argv or sys.argv[1:])]),
              "results": rows, "comparisons": comparisons, "not_compared": NO_PEER, "fast_path": fast or []}  # fmt: skip
    tmp = args.json.with_name(args.json.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(args.json)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = resolve(args)
    names = args.models or MODELS.names()
    rows: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    fast: list[dict[str, Any]] = []
    info = describe_device(device)
    args.fast_path = args.fast_path or args.fast_path_only
    for size in args.sizes:
        for name in names:
            if not args.fast_path_only:
                rows += safe_group([ours(name, args.num_classes)], size, args, device)
            if args.fast_path:
                fast.append(safe_fast_path(name, size, args, device))
            save(args, argv, info, rows, comparisons, fast)  # a long CPU run killed late keeps what it measured
        for name in [n for n in names if n in PEERS] if args.peers else []:
            pair_rows, pair_comparisons = compare(name, size, args, device)
            rows += pair_rows
            comparisons += pair_comparisons
            save(args, argv, info, rows, comparisons, fast)
    print(f"device: {info['device']} ({info.get('gpu', info['cpu'])}), torch {info['torch']}, {info['threads']} threads, "
          f"median of {args.repeat} after {args.warmup} warm-up, amp {args.amp or 'off'}, channels_last {args.channels_last}\n")  # fmt: skip
    if rows:
        print(markdown(rows, comparisons, args.batch))
    if fast:
        print(("\n" if rows else "") + fast_markdown(fast, args.batch))
    if args.peers:
        print("\n" + "\n".join(f"- {k}: {v}" for k, v in NO_PEER.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
