"""DistributedDataParallel on CPU (gloo, 2 processes): metrics equal the single-process ones, rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import validate
from semseg.data import ResumableSampler, ShardSampler
from semseg.distributed import DistContext
from tests.conftest import REPO
from tests.test_pipeline import TINY


def test_shard_sampler_scores_every_image_exactly_once() -> None:
    shards = [list(ShardSampler(5, DistContext(rank, 2, rank))) for rank in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]


def test_resumable_sampler_skips_what_this_rank_already_saw() -> None:
    full, other = ResumableSampler(range(10), DistContext(1, 2, 1), seed=3), ResumableSampler(range(10), DistContext(0, 2, 0), seed=3)
    full.set_epoch(4)
    other.set_epoch(4)
    order = list(full)
    assert len(order) == 5 and set(order).isdisjoint(other) and set(order) | set(other) == set(range(10))
    full.start = 2
    assert list(full) == order[2:] and len(full) == 3


def test_ddp_gloo_two_processes_matches_single_process_metrics(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train.py"),
           "--set", *TINY, f"log.run_dir={tmp_path}", "train.epochs=2", "train.device=cpu",
           "data.params.num_images={train: 16, val: 5, test: 1}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "synthetic_tiny"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic_tiny"]  # one run folder, written by rank 0
    assert done.stdout.count("run folder:") == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["iteration"] for r in epochs] == [2, 4]  # 16 images / 2 processes / batch 4 = 2 steps per epoch
    ddp_val = [r for r in records if r["type"] == "val"][-1]
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert len(ckpt["rng_ranks"]) == 2

    assert validate.main(["--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "single.json")]) == 0
    single = json.loads((tmp_path / "single.json").read_text())
    assert single["confusion"] and sum(map(sum, single["confusion"])) == 5 * 48 * 64
    assert single["miou"] == ddp_val["miou"]
    assert single["pixel_acc"] == ddp_val["pixel_acc"]
    assert list(single["iou"].values()) == list(ddp_val["iou"].values())


OOM_ON_RANK_1 = """
import os, sys
sys.path.insert(0, {repo!r})
import torch
import train
from semseg.engine import Stepper

real, calls = Stepper.backward, []

def backward(self, *args, **kwargs):
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 3:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return real(self, *args, **kwargs)

Stepper.backward = backward
sys.exit(train.main(sys.argv[1:]))
"""


def test_a_rank_that_fails_stops_the_others_with_one_line_each(tmp_path: Path) -> None:
    """Rank 1 runs out of memory mid-epoch; rank 0, waiting in a collective, must not hang or bury its error."""
    script = tmp_path / "oom_on_rank_1.py"
    script.write_text(OOM_ON_RANK_1.format(repo=str(REPO)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "--set", *TINY, f"log.run_dir={tmp_path / 'runs'}", "train.device=cpu", "data.params.num_images={train: 32, val: 4, test: 1}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)  # a hang fails here
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 2, done.stderr[-3000:]
    assert any(line.startswith("error: out of memory at iteration 3 with batch 4") for line in ours)
    assert "error: process 0 of 2: another process stopped (its error is printed above); the last checkpoint is intact" in ours
    assert "[rank0]: Traceback" not in done.stderr and "Connection closed by peer" not in done.stderr
