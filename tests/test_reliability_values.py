"""Issue 16: no value the config accepts may crash, corrupt or lose work; one test (at least) per principle.

Each asserts the exact one-line message and what is left on disk. Data is the tiny SegNet-layout CamVid
of tests/fixtures/camvid.py (24×32 px), the model ENet (PSPNet where BatchNorm matters), all on CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
import validate
from semseg.checkpoint import load_checkpoint, save_atomic
from semseg.errors import ConfigError
from semseg.runlog import trim_metrics_log
from tests.conftest import REPO, load_script, one_line_error
from tests.fixtures.camvid import build_camvid
from tests.test_reliability_inputs import camvid_recipe, files_under

test_script = load_script("test")


@pytest.fixture
def camvid(tmp_path: Path) -> Path:
    return build_camvid(tmp_path / "CamVid", {"train": 4, "val": 2, "test": 2})


def runs(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "runs").iterdir()) if (tmp_path / "runs").is_dir() else []


def break_mask(path: Path, value: int = 200) -> None:
    """A label value that is no class of CamVid's 11 and not the ignore value."""
    ids = np.asarray(Image.open(path)).copy()
    ids[0, 0] = value
    Image.fromarray(ids).save(path)


# ----------------------------------------------------------------------------- 1. values checked before any work


def test_bad_values_and_files_stop_before_any_folder(camvid: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = camvid_recipe(tmp_path, camvid)
    recipe = args[1]
    for override, message in [
        ("data.batch_size=0", f"{recipe}: data.batch_size: expected at least 1, got 0"),
        ("augment.std=[0,0,0]", f"{recipe}: augment.std[0]: expected more than 0 (images are divided by it), got 0"),
        ("infer.tile=[0,0]", f"{recipe}: infer.tile: sizes must be at least 1, got [0, 0]"),
        ("model.params.dropout=abc", "model.params.dropout: model 'enet' expects a number, got 'abc'"),
        ("model.params.dropout=yes", "model.params.dropout: model 'enet' expects a number, got True"),
    ]:
        assert train.main([*args, override]) == 2
        assert one_line_error(capsys) == f"error: {message}"
    png = camvid / "train" / "0001TP_000000.png"
    assert train.main(["--config", str(png)]) == 2
    assert one_line_error(capsys) == f"error: {png}: not a YAML text file (it holds binary data); --config takes a recipe .yml"
    assert runs(tmp_path) == []


def test_mixed_image_sizes_need_a_crop_or_batches_of_one(camvid: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for folder in ("train", "trainannot"):
        path = camvid / folder / "0001TP_000002.png"
        Image.open(path).resize((40, 30), Image.NEAREST).save(path)
    assert train.main(camvid_recipe(tmp_path, camvid)) == 2
    assert one_line_error(capsys) == (
        "error: data.batch_size: 2 images per batch, but split 'train' mixes sizes (0001TP_000000.png is 32×24, "
        "0001TP_000002.png 40×30); set augment.crop or data.batch_size=1")  # fmt: skip
    assert runs(tmp_path) == []
    assert train.main(camvid_recipe(tmp_path, camvid, "augment.crop=[24,32]")) == 0  # a crop makes them batchable


def test_a_batch_of_one_sample_with_batch_norm_is_refused_up_front(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--set", "model.name=pspnet50", "data.name=synthetic", "data.num_workers=0", "data.params.size=[24,32]",
            "data.params.num_images={train: 1, val: 1, test: 1}", "train.device=cpu", "log.visdom=false",
            f"log.run_dir={tmp_path / 'runs'}", "augment.crop=[24,32]"]  # fmt: skip
    assert train.main(argv) == 2
    assert one_line_error(capsys) == (
        "error: data.batch_size: training batches would hold 1 sample, and a BatchNorm layer of the model then sees "
        "1 value per channel; use data.batch_size >= 2 with a training split of at least 2 images per process")  # fmt: skip
    assert runs(tmp_path) == []


def test_resume_at_a_weights_only_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    weights = tmp_path / "weights.pt"
    save_atomic({"model": {"w": torch.zeros(1)}}, weights)
    assert train.main(["--resume", str(weights)]) == 2
    assert one_line_error(capsys) == (
        f"error: {weights}: cannot resume: holds no config, optimizer, state, rng (not a training checkpoint); "
        f"to start a new run from its weights use --set train.init_from={weights}")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]


# ----------------------------------------------------------------------------- 2. no non-finite number in a checkpoint


def test_weights_gone_non_finite_stop_the_run_and_keep_the_last_good_checkpoint(
    camvid: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = train.train_one_epoch

    def poisoned(stepper, loader, steps, lr_at, state, *rest, **kw):  # noqa: ANN001, ANN202
        done = real(stepper, loader, steps, lr_at, state, *rest, **kw)
        if state.epoch == 1:  # the second epoch ends with an infinite weight but a finite last loss
            with torch.no_grad():
                weight = next(stepper.raw.parameters())
                weight[(0,) * weight.dim()] = float("inf")
        return done

    monkeypatch.setattr(train, "train_one_epoch", poisoned)
    assert train.main(camvid_recipe(tmp_path, camvid, "train.epochs=2")) == 2
    last = load_checkpoint(tmp_path / "runs" / "camvid_tiny" / "last.pt")
    name = next(iter(last["model"]))  # the first weight, the one made infinite
    assert one_line_error(capsys) == (
        f"error: parameters became non-finite by iteration 4 (model: {name}); not saved, the last good checkpoint "
        "is kept; lower optim.lr or set train.clip_grad")  # fmt: skip
    assert last["state"]["epoch"] == 1 and all(bool(torch.isfinite(v).all()) for v in last["model"].values() if v.is_floating_point())
    assert not [p for p in files_under(tmp_path / "runs") if p.endswith(".tmp")]


# ----------------------------------------------------------------------------- 3. validation before an epoch is spent


def test_a_bad_first_validation_batch_fails_before_the_run_folder(camvid: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = camvid / "valannot" / "0001TP_000000.png"
    break_mask(bad)
    assert train.main(camvid_recipe(tmp_path, camvid)) == 2
    assert one_line_error(capsys) == f"error: {bad}: label values [200] are outside 0..10 and not void (11) or ignore (255)"
    assert runs(tmp_path) == []


def test_a_validation_failure_keeps_the_trained_epoch_and_a_resume_validates_it(
    camvid: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = camvid / "valannot" / "0001TP_000001.png"  # the second batch: the start-up probe reads the first only
    original = bad.read_bytes()
    break_mask(bad)
    assert train.main(camvid_recipe(tmp_path, camvid)) == 2
    assert one_line_error(capsys) == f"error: {bad}: label values [200] are outside 0..10 and not void (11) or ignore (255)"
    run = tmp_path / "runs" / "camvid_tiny"
    assert files_under(run) == ["config.yml", "last.pt", "metrics.jsonl"]
    state = load_checkpoint(run / "last.pt")["state"]
    assert state["epoch"] == 1 and state["val_pending"] is True  # the epoch's training is saved, its score is owed
    bad.write_bytes(original)
    assert train.main(["--resume", str(run / "last.pt")]) == 0
    state = load_checkpoint(run / "last.pt")["state"]
    assert state["val_pending"] is False and state["best_miou"] >= 0 and (run / "best.pt").is_file()
    assert [r["type"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())].count("val") == 1


# ----------------------------------------------------------------------------- 4. nothing overwritten that is not ours


@pytest.fixture
def trained(camvid: Path, tmp_path: Path) -> Path:
    assert train.main(camvid_recipe(tmp_path, camvid, "train.epochs=2", "train.keep_last=2")) == 0
    return tmp_path / "runs" / "camvid_tiny"


def test_outputs_that_exist_are_never_overwritten(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert validate.main(["--checkpoint", str(trained / "best.pt"), "--out", str(notes)]) == 2
    assert one_line_error(capsys) == f"error: {notes}: exists and is not a metrics file validate.py wrote; not overwritten: pass another --out"
    assert notes.read_text() == "mine"
    scored = tmp_path / "scored.json"
    assert validate.main(["--checkpoint", str(trained / "best.pt"), "--out", str(scored)]) == 0
    assert validate.main(["--checkpoint", str(trained / "best.pt"), "--out", str(scored)]) == 0  # its own file: replaced
    out = tmp_path / "pred"
    assert test_script.main(["--checkpoint", str(trained / "best.pt"), "--split", "test", "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    capsys.readouterr()
    assert test_script.main(["--checkpoint", str(trained / "best.pt"), "--split", "test", "--out", str(out)]) == 2
    assert one_line_error(capsys) == (
        f"error: {out / 'color' / '0001TP_000000.png'}: exists (earlier predictions?); nothing was overwritten: pass another --out")
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before


def test_a_resume_never_overwrites_a_later_last_pt_or_files_it_did_not_write(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    last = (trained / "last.pt").read_bytes()
    log = (trained / "metrics.jsonl").read_text()
    assert train.main(["--resume", str(trained / "epoch_0001.pt")]) == 2
    assert one_line_error(capsys) == (
        f"error: {trained / 'epoch_0001.pt'}: {trained.resolve() / 'last.pt'} is further on (iteration 4 > 2); resuming "
        f"from here would overwrite it and drop the metrics.jsonl records after iteration 2; resume "
        f"{trained.resolve() / 'last.pt'}, or copy this checkpoint into an empty folder to branch from it")  # fmt: skip
    assert (trained / "last.pt").read_bytes() == last and (trained / "metrics.jsonl").read_text() == log
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / "best.pt").write_text("not a checkpoint of this run")
    (elsewhere / "start.pt").write_bytes((trained / "epoch_0001.pt").read_bytes())
    assert train.main(["--resume", str(elsewhere / "start.pt")]) == 2
    assert one_line_error(capsys) == (
        f"error: {elsewhere / 'start.pt'}: resuming writes config.yml, metrics.jsonl, class_stats.json, last.pt, best.pt "
        f"beside it, but {elsewhere.resolve()} is not a run folder and already holds best.pt; copy the checkpoint into an "
        "empty folder and resume there")  # fmt: skip
    assert sorted(p.name for p in elsewhere.iterdir()) == ["best.pt", "start.pt"]


# ----------------------------------------------------------------------------- 5. no litter; 6. counts are true


def test_a_failed_setup_leaves_no_folder_and_keeps_the_next_runs_name(
    camvid: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = camvid / "trainannot" / "0001TP_000003.png"
    original = bad.read_bytes()
    break_mask(bad)
    assert train.main(camvid_recipe(tmp_path, camvid, "loss.class_weights=enet")) == 2  # counting pixels meets it
    assert one_line_error(capsys) == f"error: {bad}: label values [200] are outside 0..10 and not void (11) or ignore (255)"
    assert runs(tmp_path) == []
    bad.write_bytes(original)

    def no_live_log(*args: object, **kwargs: object) -> None:  # fails after the run folder was made
        raise ConfigError("log.visdom_server: stand-in failure after the run folder exists")

    monkeypatch.setattr(train, "build_live_log", no_live_log)
    assert train.main(camvid_recipe(tmp_path, camvid)) == 2
    assert one_line_error(capsys) == "error: log.visdom_server: stand-in failure after the run folder exists"
    assert runs(tmp_path) == []  # config.yml was written in it: the folder went with it
    monkeypatch.undo()
    assert train.main(camvid_recipe(tmp_path, camvid)) == 0
    assert runs(tmp_path) == ["camvid_tiny"]  # not camvid_tiny-2


def test_test_script_reads_every_input_before_writing_and_counts_what_is_on_disk(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    photos, other = tmp_path / "photos", tmp_path / "other"
    photos.mkdir(), other.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 24), (i * 60, 90, 30)).save(photos / f"p{i}.png")
    (photos / "p3.png").write_text("not an image")
    out = tmp_path / "pred"
    assert test_script.main(["--checkpoint", str(trained / "best.pt"), "--input", str(photos), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"error: {photos / 'p3.png'}: cannot read image ("), err
    assert not out.exists()  # found before the first prediction
    (photos / "p3.png").unlink()
    Image.new("RGB", (32, 24)).save(other / "p1.png")
    assert test_script.main(["--checkpoint", str(trained / "best.pt"), "--input", str(photos), str(other), "--out", str(out)]) == 2
    assert one_line_error(capsys) == f"error: p1: two inputs would both be written as {out / 'ids' / 'p1'}.png; rename one"
    assert not out.exists()
    assert test_script.main(["--checkpoint", str(trained / "best.pt"), "--input", str(photos), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 3 predictions to {out}/")
    assert sorted(p.name for p in (out / "ids").iterdir()) == ["p0.png", "p1.png", "p2.png"]


# ----------------------------------------------------------------------------- 7. on_error skip with class weights


def test_skip_with_class_weights_leaves_the_bad_mask_out_of_the_counts(camvid: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    break_mask(camvid / "trainannot" / "0001TP_000003.png")
    assert train.main(camvid_recipe(tmp_path, camvid, "loss.class_weights=enet", "data.on_error=skip")) == 0
    stats = json.loads((tmp_path / "runs" / "camvid_tiny" / "class_stats.json").read_text())
    assert sum(stats["counts"]) == 3 * (24 * 32 - 16)  # three good masks of 24×32 less 4×4 void; the fourth left out
    epoch = [r for r in map(json.loads, (tmp_path / "runs" / "camvid_tiny" / "metrics.jsonl").read_text().splitlines())
             if r["type"] == "epoch"]  # fmt: skip
    assert epoch[0]["skipped_samples"] >= 1


# ----------------------------------------------------------------------------- 8. python -m semseg.loaders


def test_dataset_check_exits_2_on_a_mask_of_the_wrong_size(camvid: Path) -> None:
    bad = camvid / "valannot" / "0001TP_000001.png"
    Image.open(bad).resize((16, 12), Image.NEAREST).save(bad)
    result = subprocess.run([sys.executable, "-m", "semseg.loaders", str(camvid), "--dataset", "camvid"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"       val: 2 images, 2 masks; bad mask — {bad}: mask is 16×12 but its image is 32×24" in result.stdout.splitlines()
    assert result.stderr.strip() == "error: 1 problem(s) reported above"


def test_a_resume_that_revalidates_drops_the_validation_record_it_redoes(tmp_path: Path) -> None:
    """Killed after logging a validation but before saving its score: the resume validates again, logged once."""
    log = tmp_path / "metrics.jsonl"
    records = [{"type": "train", "iteration": 2}, {"type": "epoch", "iteration": 4}, {"type": "val", "iteration": 4},
               {"type": "train", "iteration": 6}]  # fmt: skip
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert trim_metrics_log(log, 4, revalidate=True) == 2
    assert [json.loads(line) for line in log.read_text().splitlines()] == records[:2]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert trim_metrics_log(log, 4) == 1  # a checkpoint with its score: the validation record stays
