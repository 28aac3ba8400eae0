"""tools/record_result.py: the entry it writes is the best validation record, the whole run's epochs
and wall time; recording a run again replaces its entry; unreadable files are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import load_script

record_result = load_script("tools/record_result")

NAN = float("nan")


def make_run(root: Path, name: str = "enet_camvid_cpu") -> Path:
    """A run folder as train.py leaves it: config.yml and metrics.jsonl (two epochs, best at the first)."""
    run = root / name
    run.mkdir()
    cfg = {"model": {"name": "enet"}, "data": {"name": "camvid", "val_split": "val", "batch_size": 8},
           "augment": {"crop": [240, 320]}}  # fmt: skip
    (run / "config.yml").write_text(yaml.safe_dump(cfg))
    records = [
        {"type": "train", "epoch": 1, "iteration": 10, "loss": 1.5},
        {"type": "epoch", "epoch": 1, "iteration": 45, "seconds": 90.0},
        {"type": "val", "epoch": 1, "iteration": 45, "miou": 0.4567, "pixel_acc": 0.8, "iou": {"sky": 0.9, "pole": NAN}},
        {"type": "epoch", "epoch": 2, "iteration": 90, "seconds": 60.0},
        {"type": "val", "epoch": 2, "iteration": 90, "miou": 0.41, "pixel_acc": 0.81, "iou": {"sky": 0.8, "pole": 0.02}},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))  # NaN as json writes it
    return run


def record(run: Path, out: Path, *extra: str) -> list[dict]:
    argv = [str(run), "--device", "CPU, 2 cores", "--command", "python train.py …", "--results-dir", str(out), *extra]
    assert record_result.main(argv) == 0
    return json.loads((out / "camvid.json").read_text())


def test_entry_is_the_best_validation_record_and_the_whole_run(tmp_path: Path) -> None:
    (entry,) = record(make_run(tmp_path), tmp_path)
    assert entry["val_miou"] == 45.67 and entry["best_epoch"] == 1 and entry["pixel_acc"] == 80.0  # not the last (41.0)
    assert entry["per_class_iou"] == {"sky": 90.0, "pole": None}  # NaN (class absent) is null, valid JSON
    assert entry["epochs"] == 2 and entry["wall_time_min"] == 2.5  # (90 + 60) s
    assert (entry["model"], entry["dataset"], entry["split"], entry["crop"], entry["batch_size"]) == ("enet", "camvid", "val", [240, 320], 8)
    assert (entry["device"], entry["command"]) == ("CPU, 2 cores", "python train.py …")


def test_records_a_crashed_run_logged_twice_count_once(tmp_path: Path) -> None:
    """The same reader as plot_run.py: epoch 2 logged again by a resume adds its seconds once, the later copy wins."""
    run = make_run(tmp_path)
    again = {"type": "epoch", "epoch": 2, "iteration": 90, "seconds": 66.0}
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps(again) + "\n")
    (entry,) = record(run, tmp_path)
    assert entry["wall_time_min"] == 2.6  # (90 + 66) s, not (90 + 60 + 66) s


def test_recording_a_run_again_replaces_its_entry_and_keeps_the_others(tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    record(make_run(tmp_path, "a"), out)
    record(make_run(tmp_path, "b"), out)
    entries = record(tmp_path / "a", out, "--wall-time-min", "41.7", "--note", "resumed")
    assert [e["run"] for e in entries] == ["b", "a"]
    assert (entries[1]["wall_time_min"], entries[1]["note"]) == (41.7, "resumed")


@pytest.mark.parametrize("broken, message", [
    ("metrics.jsonl", r"metrics\.jsonl:1: not a metrics record"),
    ("config.yml", r"config\.yml: line 2 YAML syntax error: expected ',' or ']'"),
])  # fmt: skip
def test_unreadable_run_files_are_one_line_errors_naming_the_file(tmp_path: Path, broken: str, message: str) -> None:
    run = make_run(tmp_path)
    (run / broken).write_text("{not: [valid\n" if broken == "config.yml" else "not json\n")
    with pytest.raises(SystemExit, match=message) as exc:
        record(run, tmp_path)
    assert "\n" not in str(exc.value)


def test_a_missing_run_or_a_run_without_validation_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"error: .*nowhere[/\\]config\.yml: config file not found"):
        record(tmp_path / "nowhere", tmp_path)
    run = make_run(tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(ln for ln in lines if '"val"' not in ln) + "\n")
    with pytest.raises(SystemExit, match=r"metrics\.jsonl: no validation record"):
        record(run, tmp_path)
    with pytest.raises(SystemExit, match=r"error: .*missing[/\\]camvid\.json: cannot write: no such file or directory$"):
        record(make_run(tmp_path, "complete"), tmp_path / "missing")
