"""One prepared run for a lent GPU machine (≤ 9 minutes): benchmark every model, train the small CamVid recipes.

    python bench/gpu_suite.py --out "$OUT"                       # on the GPU machine (the device tool's $OUT)
    python bench/gpu_suite.py --out /tmp/gpu_dry --dry-run       # rehearsal on a CPU: tiny sizes, synthetic data, ~1 min

Writes into ``--out`` everything it measures, so that one command's output folder is the record:

- ``device.json`` (GPU name, driver, torch / CUDA versions) and ``nvidia-smi.txt``;
- ``bench_gpu.json`` / ``bench_gpu.md``: ``bench/models.py`` for every registered model at 360×480 with
  ``--fast-path`` (latency, throughput, peak memory, training step in fp32 and in bf16 — fp16 on a GPU
  without bf16 — with the ratio), ``bench_gpu_fp16.json`` the same with fp16;
- ``runs/enet_camvid``, ``runs/erfnet_camvid``: the recipes at full length (``configs/*.yml`` as shipped)
  with CamVid from ``--camvid`` (default: ``shared/data/CamVid`` or ``../shared/data/CamVid``), each under a
  time budget: at its end ``train.py`` gets SIGTERM, saves a resumable ``last.pt`` and the run is
  resumable elsewhere with ``python train.py --resume``; ``validate.py`` then scores ``best.pt``;
- ``summary.json``: each stage's command, exit code, wall time and headline numbers.

Stages never run past their share of ``--budget`` seconds, so the total stays inside the device
tool's per-command limit with time to copy the folder back.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("enet_camvid", "erfnet_camvid")


def find_camvid(explicit: Optional[str]) -> Optional[Path]:
    candidates = [Path(explicit)] if explicit else [REPO / "shared" / "data" / "CamVid", REPO.parent / "shared" / "data" / "CamVid"]
    return next((p for p in candidates if (p / "train").is_dir()), None)


def run_stage(name: str, cmd: list[str], seconds: float, out: Path, summary: dict[str, Any]) -> int:
    """Run ``cmd`` with stdout/stderr in ``out/<name>.log``; SIGTERM (then SIGKILL 30 s later) at ``seconds``."""
    log = out / f"{name}.log"
    start = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=max(1.0, seconds))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # train.py: finish the step, save last.pt, exit 130
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    summary["stages"].append({"stage": name, "cmd": " ".join(cmd), "rc": rc, "seconds": round(time.time() - start, 1),
                              "budget_s": round(seconds, 1), "log": log.name})  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))  # after every stage: a kill keeps what is done
    return rc


def describe(out: Path, summary: dict[str, Any]) -> None:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda,
                            "cpu_count": os.cpu_count()}  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), "bf16": torch.cuda.is_bf16_supported()}
        try:
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
            (out / "nvidia-smi.txt").write_text(smi)
        except (OSError, subprocess.TimeoutExpired):
            pass
    (out / "device.json").write_text(json.dumps(info, indent=1))
    summary["device"] = info


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for every result (the device tool's $OUT)")
    parser.add_argument("--budget", type=float, default=510, help="seconds for all stages together (default 510)")
    parser.add_argument("--camvid", help="CamVid root (SegNet layout)")
    parser.add_argument("--dry-run", action="store_true", help="CPU rehearsal: two models, tiny sizes, synthetic data, 1 epoch")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"argv": sys.argv[1:] if argv is None else argv, "stages": []}
    started = time.time()
    describe(out, summary)
    py = sys.executable
    camvid = None if args.dry_run else find_camvid(args.camvid)
    summary["camvid"] = str(camvid) if camvid else None
    if args.dry_run:
        bench = ["--models", "enet", "erfnet", "--sizes", "64x96", "--batch", "2", "--repeat", "1", "--warmup", "0", "--device", "cpu"]
        shares = {"bench": 0.3, "bench_fp16": 0.0, **{r: 0.35 for r in RECIPES}}
    else:
        bench = ["--sizes", "360x480", "--batch", "8", "--throughput-batch", "16", "--repeat", "10", "--warmup", "3", "--device", "cuda"]
        shares = {"bench": 0.22, "bench_fp16": 0.08, **{r: 0.35 for r in RECIPES}}
    plan = [("bench", [py, "bench/models.py", *bench, "--fast-path", "--json", str(out / "bench_gpu.json")])]
    if not args.dry_run:
        plan.append(("bench_fp16", [py, "bench/models.py", *bench, "--amp", "fp16", "--channels-last", "--json", str(out / "bench_gpu_fp16.json")]))
    for recipe in RECIPES:
        train = [py, "train.py", "--config", f"configs/{recipe}.yml", "--set", f"log.run_dir={out / 'runs'}", "log.visdom=false"]
        if camvid is not None:
            train.append(f"data.root={camvid}")
        else:  # rehearsal (or no CamVid on the machine): the recipe's model and optimiser on the built-in scenes
            train += ["data.name=synthetic", "data.root=", "data.params={size: [48, 64], num_images: {train: 8, val: 2, test: 1}}",
                      "augment.crop=[48,64]", "train.epochs=1", "train.val_every=1", "data.batch_size=4"]  # fmt: skip
        plan.append((recipe, train))
    total_share = sum(shares[name] for name, _ in plan)
    for name, cmd in plan:
        left = args.budget - (time.time() - started)
        if left < 20:
            summary["stages"].append({"stage": name, "skipped": "out of budget"})
            continue
        rc = run_stage(name, cmd, min(left, args.budget * shares[name] / total_share), out, summary)
        run = out / "runs" / name
        if name in RECIPES and (run / "best.pt").is_file() and rc in (0, 130):
            scored = run / "best.val.json"
            validate = [py, "validate.py", "--checkpoint", str(run / "best.pt"), "--out", str(scored)]
            validate += ["--set", f"data.root={camvid}"] if camvid else []
            run_stage(f"{name}_validate", validate, max(20.0, args.budget - (time.time() - started)), out, summary)
            summary["stages"][-1]["miou"] = json.loads(scored.read_text())["miou"] if scored.is_file() else None
    summary["seconds"] = round(time.time() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({s["stage"]: s.get("rc", s.get("skipped")) for s in summary["stages"]}))
    return 0 if all(s.get("rc") in (0, 130) for s in summary["stages"] if "rc" in s) else 1


if __name__ == "__main__":
    sys.exit(main())
