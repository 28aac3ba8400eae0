"""train.py → validate.py → test.py end to end on the built-in synthetic scenes, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
import validate
from tests.conftest import REPO, load_script

test_script = load_script("test")  # the repo's test.py; `import test` would be the stdlib package

TINY = [
    "data.params.size=[48,64]", "data.params.num_images={train: 48, val: 12, test: 3}",
    "data.num_workers=0", "data.batch_size=4", "schedule.warmup_iters=5", "augment.crop=[48,64]", "log.visdom=false",
    "train.val_every=1", "log.print_every=2",
]  # fmt: skip


def run_train(tmp_path: Path, *extra: str) -> Path:
    rc = train.main(["--config", str(REPO / "configs" / "synthetic_tiny.yml"), "--set", *TINY, f"log.run_dir={tmp_path}", *extra])
    assert rc == 0
    return tmp_path / "synthetic_tiny"


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_train(tmp_path_factory.mktemp("runs"), "train.epochs=10")


def test_training_learns_and_leaves_a_run_folder(trained: Path) -> None:
    epochs = records(trained, "epoch")
    assert [e["epoch"] for e in epochs] == list(range(1, 11))
    assert epochs[-1]["loss"] < 0.6 * epochs[0]["loss"]
    val = records(trained, "val")
    assert val[-1]["miou"] > 0.40, f"val mIoU {val[-1]['miou']:.3f} below the floor"
    assert {"last.pt", "best.pt", "config.yml", "metrics.jsonl"} <= {p.name for p in trained.iterdir()}
    assert "name: synthetic" in (trained / "config.yml").read_text()
    best = torch.load(trained / "best.pt", weights_only=False)
    assert best["metrics"]["miou"] == pytest.approx(max(v["miou"] for v in val))


def test_validate_reproduces_the_training_metric(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.json"
    assert validate.main(["--checkpoint", str(trained / "last.pt"), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["miou"] == pytest.approx(records(trained, "val")[-1]["miou"], abs=1e-9)
    assert len(metrics["confusion"]) == 6 and "road" in capsys.readouterr().out


def test_validate_names_what_does_not_fit(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert validate.main(["--checkpoint", str(trained / "last.pt"), "--set", "model.name=erfnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {trained / 'last.pt'}: checkpoint does not fit the model (") and len(err.splitlines()) == 1
    assert validate.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err


def test_test_script_writes_ids_colours_and_overlays(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    assert test_script.main(["--checkpoint", str(trained / "best.pt"), "--split", "test", "--out", str(out), "--confidence"]) == 0
    names = sorted(p.name for p in (out / "ids").iterdir())
    assert names == ["0000.png", "0001.png", "0002.png"]
    ids = np.asarray(Image.open(out / "ids" / "0000.png"))
    assert ids.shape == (48, 64) and ids.max() < 6
    assert Image.open(out / "color" / "0000.png").mode == "RGB"
    assert Image.open(out / "overlay" / "0000.png").size == (64, 48)
    assert (out / "confidence" / "0000.png").is_file()


def test_test_script_on_a_folder_and_on_bad_inputs(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((37, 53), np.uint8), "L").save(folder / "grey.jpg")  # greyscale, odd size
    assert test_script.main(["--checkpoint", str(trained / "best.pt"), "--input", str(folder), "--out", str(tmp_path / "o")]) == 0
    assert np.asarray(Image.open(tmp_path / "o" / "ids" / "grey.png")).shape == (37, 53)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert test_script.main(["--checkpoint", str(trained / "best.pt"), "--input", str(empty)]) == 2
    assert "empty: folder holds no images" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert test_script.main(["--checkpoint", str(trained / "best.pt"), "--input", str(folder), "--out", str(tmp_path / "file")]) == 2
    assert "output path exists and is not a folder" in capsys.readouterr().err


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = run_train(tmp_path / "a", "train.epochs=3", "train.val_every=2")
    real_epoch = train.train_one_epoch

    def crash_in_epoch_2(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if args[5].epoch == 1:  # the TrainState: epoch 1 is done and its checkpoint written
            raise RuntimeError("simulated crash")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", crash_in_epoch_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(tmp_path / "b", "train.epochs=3", "train.val_every=2")
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    stopped = tmp_path / "b" / "synthetic_tiny"
    assert torch.load(stopped / "last.pt", weights_only=False)["state"]["epoch"] == 1
    assert train.main(["--resume", str(stopped / "last.pt")]) == 0
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(stopped / "last.pt", weights_only=False)
    assert a["state"]["iteration"] == b["state"]["iteration"] == 3 * 12
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert records(straight, "val") == records(stopped, "val")


def test_config_error_is_one_line_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train.main(["--set", "train.epoch=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("synthetic_tiny.yml: unknown key 'train.epoch' (did you mean 'epochs'?)")
    assert len(err.splitlines()) == 1
