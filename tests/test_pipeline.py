"""train.py → validate.py → test.py end to end on the built-in synthetic scenes, on CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
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


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_test_scripts_default_output_folder_is_git_ignored() -> None:
    out = test_script.parse_args(["--checkpoint", "best.pt", "--split", "test"]).out
    for path in (f"{out}/color/0000.png", f"{out}/ids/0000.png"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0, f"{path} is not in .gitignore"


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
        if args[4].epoch == 1:  # the TrainState: epoch 1 is done and its checkpoint written
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


# ----------------------------------------------------------------------------- inference modes and video input


def test_validate_slide_with_a_covering_tile_gives_the_whole_image_miou(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = str(trained / "last.pt")
    assert validate.main(["--checkpoint", ckpt, "--out", str(tmp_path / "whole.json")]) == 0
    assert "inference: whole)" in capsys.readouterr().out
    assert validate.main(["--checkpoint", ckpt, "--out", str(tmp_path / "slide.json"), "--mode", "slide", "--tile", "48", "64"]) == 0
    assert "inference: slide 48×64/32×42)" in capsys.readouterr().out
    whole, slide = (json.loads((tmp_path / f"{m}.json").read_text()) for m in ("whole", "slide"))
    assert slide["miou"] == pytest.approx(whole["miou"], abs=1e-9)
    assert slide["infer"] == {"mode": "slide", "tile": [48, 64], "stride": None, "scales": [1.0], "flip": False}
    argv = ["--checkpoint", ckpt, "--out", str(tmp_path / "tta.json"), "--mode", "slide", "--tile", "32", "32", "--scales", "0.75", "1", "--flip"]
    assert validate.main(argv) == 0
    assert json.loads((tmp_path / "tta.json").read_text())["miou"] > 0.3
    assert validate.main(["--checkpoint", ckpt, "--tile", "16", "16", "--stride", "24", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("infer.stride: [24, 8] is larger than infer.tile [16, 16] and would leave pixels unseen") and len(err.splitlines()) == 1


def write_video(path: Path, frames: int, height: int = 32, width: int = 48) -> None:
    """A tiny clip written with PyAV, in the first codec the installed wheel has."""
    av = pytest.importorskip("av")
    codec = next(c for c in ("mpeg4", "libx264", "png") if c in av.codecs_available)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=5)
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb24" if codec == "png" else "yuv420p"
        for i in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:, : 8 * (i + 1)] = (40 * i, 200, 100)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_test_script_on_a_video_writes_one_prediction_per_kept_frame(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    video = tmp_path / "clip.mp4"
    write_video(video, 5)
    ckpt = str(trained / "best.pt")
    assert test_script.main(["--checkpoint", ckpt, "--input", str(video), "--out", str(tmp_path / "all")]) == 0
    assert sorted(p.name for p in (tmp_path / "all" / "ids").iterdir()) == [f"clip_{i:06d}.png" for i in range(5)]
    assert np.asarray(Image.open(tmp_path / "all" / "ids" / "clip_000004.png")).shape == (32, 48)
    assert "inference: whole)" in capsys.readouterr().out
    argv = ["--checkpoint", ckpt, "--input", str(video), "--out", str(tmp_path / "some"), "--every", "2", "--mode", "slide", "--tile", "24", "24", "--flip"]
    assert test_script.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "some" / "ids").iterdir()) == ["clip_000000.png", "clip_000002.png", "clip_000004.png"]
    assert "inference: slide 24×24/16×16, flip)" in capsys.readouterr().out


def test_test_script_on_an_animated_gif(trained: Path, tmp_path: Path) -> None:
    frames = [Image.new("RGB", (40, 30), (60 * i, 120, 30)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert test_script.main(["--checkpoint", str(trained / "best.pt"), "--input", str(tmp_path / "anim.gif"), "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o" / "ids").iterdir()) == [f"anim_{i:06d}.png" for i in range(3)]


def test_test_script_video_errors_are_one_line(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    ckpt = str(trained / "best.pt")
    assert test_script.main(["--checkpoint", ckpt, "--input", str(tmp_path / "missing.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'missing.mp4'}: no such file or folder"
    (tmp_path / "fake.mp4").write_text("not a video")
    pytest.importorskip("av")
    assert test_script.main(["--checkpoint", ckpt, "--input", str(tmp_path / "fake.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'fake.mp4'}: cannot read video (") and len(err.splitlines()) == 1
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    assert test_script.main(["--checkpoint", ckpt, "--input", str(tmp_path / "fake.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'fake.mp4'}: reading video needs PyAV, which is not installed (pip install av)"
