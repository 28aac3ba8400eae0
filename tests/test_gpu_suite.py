"""bench/gpu_suite.py, the prepared run for a lent GPU: rehearsed on CPU (--dry-run) and its time budget."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_script

suite = load_script("bench/gpu_suite")


def test_dry_run_benchmarks_trains_and_scores_both_recipes(tmp_path: Path) -> None:
    assert suite.main(["--out", str(tmp_path), "--dry-run", "--budget", "3000"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["bench", "enet_camvid", "enet_camvid_validate", "erfnet_camvid", "erfnet_camvid_validate"]
    assert all(s["rc"] == 0 and s["seconds"] <= s["budget_s"] for s in stages.values())
    bench = json.loads((tmp_path / "bench_gpu.json").read_text())
    rows = bench["fast_path"]
    assert {r["model"] for r in rows} == {"enet", "erfnet"} and all(r["train_speedup"] > 0 for r in rows)
    for recipe in ("enet_camvid", "erfnet_camvid"):
        scored = json.loads((tmp_path / "runs" / recipe / "best.val.json").read_text())
        assert stages[f"{recipe}_validate"]["miou"] == scored["miou"] and 0 <= scored["miou"] <= 1
    assert (tmp_path / "device.json").is_file()


def test_stages_that_no_longer_fit_the_budget_are_skipped_not_started(tmp_path: Path) -> None:
    assert suite.main(["--out", str(tmp_path), "--dry-run", "--budget", "5"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s.get("skipped") for s in summary["stages"]] == ["out of budget"] * 3
    assert not (tmp_path / "bench_gpu.json").exists()
