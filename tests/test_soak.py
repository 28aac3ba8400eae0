"""bench/soak.py end to end at a toy size: two cycles, identical to the straight run, every epoch sampled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script

soak = load_script("bench/soak")


def test_soak_smoke_two_cycles_match_the_straight_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "soak.json"
    argv = ["--iterations", "12", "--cycles", "2", "--train-images", "8", "--batch", "4", "--size", "24", "32",
            "--val-every", "2", "--max-slope-kib", "1e9", "--workdir", str(tmp_path), "--json", str(out)]  # fmt: skip
    assert soak.main(argv) == 0  # RSS of a few epochs is warm-up, hence no slope limit here
    result = json.loads(out.read_text())
    assert result["verdict"] == "PASS" and result["iterations"] == 12 and result["stops"] == [5]  # mid-epoch 3
    assert result["identical"] == {"model": True, "optimizer": True, "state": True, "metrics_jsonl": True, "val_records": 3}
    assert [(r["run"], r["cycle"], r["iteration"]) for r in result["cycles"]] == [("straight", 0, 12), ("resumed", 0, 5), ("resumed", 1, 12)]
    epochs = [s["epoch"] for s in result["samples"]["resumed"] if s["epoch"] is not None]
    assert epochs == [0, 1, 2, 2, 3, 4, 5]  # one sample before each epoch; epoch 2 again after the resume
    assert all(s["rss_kib"] > 0 and s["threads"] >= 1 for s in result["samples"]["resumed"])
    text = capsys.readouterr().out
    assert "| resumed | 1 | 12 | 6 |" in text and "weights identical" in text and text.rstrip().endswith("verdict: PASS")
