"""bench/models.py runs end to end on a tiny model and writes the numbers it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script

bench = load_script("bench/models")

NUMBERS = ["params_m", "gflops", "fwd_ms", "train_ms", "fwd_peak_mib", "train_peak_mib"]


def run(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "bench.json"
    argv = ["--sizes", "32x48", "--repeat", "1", "--warmup", "0", "--batch", "2", "--device", "cpu", "--threads", "1", "--json", str(out), *extra]
    assert bench.main(argv) == 0
    return json.loads(out.read_text())


def test_bench_reports_positive_numbers_and_the_device(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    record = run(tmp_path, "--models", "enet")
    (row,) = record["results"]
    assert row["model"] == "enet" and row["size"] == [32, 48] and row["batch"] == 2
    assert all(row[key] > 0 for key in ["params_m", "gflops", "fwd_ms", "train_ms"]), row
    assert row["fwd_peak_mib"] >= 0 and row["train_peak_mib"] > 0  # a step allocates at least the gradients
    assert len(row["fwd_ms_all"]) == len(row["train_ms_all"]) == 1
    assert {"cpu", "torch", "threads", "memory_method", "device"} <= set(record["device"])
    assert record["device"]["threads"] == 1 and record["comparisons"] == []
    table = capsys.readouterr().out
    assert "| enet | semseg | 32×48 | 0.36 |" in table


def test_peer_comparison_is_interleaved_at_a_size_smp_accepts(tmp_path: Path) -> None:
    pytest.importorskip("segmentation_models_pytorch")
    record = run(tmp_path, "--models", "linknet", "--peers")
    (comparison,) = record["comparisons"]
    assert comparison["theirs"] == "smp.Linknet(resnet18)" and comparison["twin"]
    assert comparison["size"] == [32, 64] and comparison["requested_size"] == [32, 48]
    assert comparison["fwd_ratio"] > 0 and comparison["train_ratio"] > 0
    pair = [r for r in record["results"] if "compared_in" in r]
    assert [r["impl"] for r in pair] == ["semseg", "smp"] and all(r[k] > 0 for r in pair for k in NUMBERS if k != "fwd_peak_mib")


def test_throughput_batch_reports_images_per_second_of_that_batch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    record = run(tmp_path, "--models", "enet", "--throughput-batch", "3")
    (row,) = record["results"]
    assert row["throughput_batch"] == 3 and len(row["batch_fwd_ms_all"]) == 1
    assert row["images_per_s"] == pytest.approx(3e3 / row["batch_fwd_ms"])
    assert "images/s |" in capsys.readouterr().out.splitlines()[2]


def test_fast_path_times_fp32_and_bf16_channels_last_interleaved(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    record = run(tmp_path, "--models", "enet", "--fast-path", "--repeat", "2")
    (row,) = record["fast_path"]
    assert row["model"] == "enet" and row["fast"] == "bf16 autocast + channels_last"
    for kind in ("train", "fwd"):
        assert len(row[f"fp32_{kind}_ms_all"]) == len(row[f"fast_{kind}_ms_all"]) == 2
        assert row[f"{kind}_speedup"] == pytest.approx(row[f"fp32_{kind}_ms"] / row[f"fast_{kind}_ms"])
    assert len(record["results"]) == 1  # the full row too
    assert "train speed-up" in capsys.readouterr().out


def test_fast_path_only_skips_the_full_rows(tmp_path: Path) -> None:
    record = run(tmp_path, "--models", "enet", "--fast-path-only")
    assert record["results"] == [] and len(record["fast_path"]) == 1


def test_bf16_autocast_is_allowed_on_cpu_and_fp16_is_not(tmp_path: Path) -> None:
    (row,) = run(tmp_path, "--models", "enet", "--amp", "bf16", "--channels-last")["results"]
    assert row["train_ms"] > 0 and "error" not in row
    with pytest.raises(SystemExit, match="fp16"):
        bench.main(["--models", "enet", "--device", "cpu", "--amp", "fp16"])
