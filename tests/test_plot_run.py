"""tools/plot_run.py: every PNG from a tiny synthetic run, the confusion maths, the sample grid, one-line errors."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semseg.errors import DataError
from tests.conftest import load_script
from tests.test_pipeline import run_train

pytest.importorskip("matplotlib")

plot_run = load_script("tools/plot_run")

PLOTS = ["loss.png", "lr.png", "miou.png", "class_iou.png", "confusion.png", "samples.png"]
CURVES = PLOTS[:4]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 epochs on 48×64 synthetic scenes (TINY): a run folder with every kind of record, in seconds."""
    return run_train(tmp_path_factory.mktemp("runs"), "train.epochs=2")


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "plot_run" and r.levelno == logging.WARNING]


def check_png(path: Path) -> Image.Image:
    """Exists, decodes, is of a plausible size, and is not blank (a blank figure has one or two colours)."""
    with Image.open(path) as image:
        image.load()
    assert 150 <= image.width <= 2000 and 150 <= image.height <= 2000, (path.name, image.size)
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 8, f"{path.name} looks blank ({len(colours)} colours)"
    return image


def test_every_plot_from_a_run(run: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    assert plot_run.main([str(run)]) == 0  # no JSON from validate.py: the confusion is computed
    out = run / "plots"
    assert sorted(p.name for p in out.iterdir()) == sorted(PLOTS)
    for name in PLOTS:
        check_png(out / name)
    assert warnings_of(caplog) == []
    assert "6 plots in" in capsys.readouterr().out
    # samples.png is the grid pixel for pixel: 4 rows × 3 tiles of 48×64, plus the title row and legend column
    grid = (4 * 48 + 3 * plot_run.GAP, 3 * 64 + 2 * plot_run.GAP)
    size = Image.open(out / "samples.png").size
    assert size == (grid[1] + plot_run.SAMPLES_RIGHT, grid[0] + plot_run.SAMPLES_TOP)


def test_row_normalise() -> None:
    share = plot_run.row_normalise([[3, 1], [0, 0]])
    np.testing.assert_allclose(share, [[0.75, 0.25], [0.0, 0.0]])  # a class absent from the split: zeros, not NaN
    share = plot_run.row_normalise(np.array([[5, 5, 0], [0, 0, 0], [1, 2, 7]], dtype=np.int64))
    assert not np.isnan(share).any()
    np.testing.assert_allclose(share.sum(1), [1, 0, 1])
    np.testing.assert_allclose(share[2], [0.1, 0.2, 0.7])
    with pytest.raises(DataError, match="not square"):
        plot_run.row_normalise([[1, 2, 3], [4, 5, 6]])


def test_sample_grid_tiles() -> None:
    rng = np.random.default_rng(0)
    triples = [tuple(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)) for _ in range(3)]
    grid = plot_run.sample_grid(triples, gap=2)
    assert grid.shape == (3 * 48 + 2 * 2, 3 * 64 + 2 * 2, 3)
    for r, triple in enumerate(triples):  # small tiles are kept as they are, in place
        for c, tile in enumerate(triple):
            np.testing.assert_array_equal(grid[r * 50 : r * 50 + 48, c * 66 : c * 66 + 64], tile)
    assert (grid[48:50] == 255).all() and (grid[:, 64:66] == 255).all()
    big = [tuple(np.zeros((360, 480, 3), np.uint8) for _ in range(3))] * 2
    assert plot_run.sample_grid(big, gap=2).shape == (2 * 360 + 2, 3 * 480 + 4, 3)  # native size, never scaled down
    mixed = plot_run.sample_grid([triples[0], tuple(np.zeros((20, 30, 3), np.uint8) for _ in range(3))], gap=2)
    assert mixed.shape == (48 + 2 + 20, 3 * 64 + 4, 3)
    assert all((mixed[50:, x : x + 30] == 0).all() for x in (0, 32, 64)) and (mixed[50:, 94:] == 255).all()  # left-aligned on white


def test_samples_png_keeps_every_class_of_a_mask(tmp_path: Path) -> None:
    """Masks wider than a laptop tile, with classes drawn in one-pixel stripes: every class survives into the PNG."""
    palette = [(0, 0, 0), (255, 0, 0), (0, 200, 0), (0, 0, 255)]
    ids = np.zeros((60, 480), np.uint8)
    ids[:, 0:160:2] = 1  # even columns on the left, odd ones in the middle, every other row on the right:
    ids[:, 161:320:2] = 2  # a resize by any factor drops one of them
    ids[0::2, 320:] = 3
    colours = np.asarray(palette, np.uint8)[ids]
    image = np.full((60, 480, 3), 128, np.uint8)
    grid = plot_run.sample_grid([(image, colours, colours)])
    path = plot_run.plot_samples(grid, ["void", "a", "b", "c"], palette, tmp_path)
    with Image.open(path) as png:
        drawn = np.asarray(png.convert("RGB"))
    h, w = grid.shape[:2]
    np.testing.assert_array_equal(drawn[plot_run.SAMPLES_TOP :, :w], grid)  # pixel for pixel, below the titles
    tile = drawn[plot_run.SAMPLES_TOP :, 2 * (480 + plot_run.GAP) :][:, :480]  # the prediction
    present = {tuple(c) for c in tile.reshape(-1, 3)}
    for cls in (1, 2, 3):
        assert palette[cls] in present, f"class {cls} vanished from samples.png"
        assert (tile == palette[cls]).all(-1).sum() == (ids == cls).sum()  # every one of its pixels


def test_confusion_from_the_validate_json(run: Path) -> None:
    ckpt = run / "best.pt"
    counts = np.arange(36).reshape(6, 6)
    record = {"iou": {f"c{i}": 0.5 for i in range(6)}, "confusion": counts.tolist()}
    saved = ckpt.with_suffix(".val.json")
    saved.write_text(json.dumps(record))
    try:
        mat, classes = plot_run.saved_confusion(ckpt, "val")
        np.testing.assert_array_equal(mat, counts)
        assert classes == [f"c{i}" for i in range(6)]
        os.utime(saved, (ckpt.stat().st_mtime - 60,) * 2)  # older than the weights: stale, recomputed
        assert plot_run.saved_confusion(ckpt, "val") is None
    finally:
        saved.unlink()


def test_no_dataset_draws_the_curves_with_one_warning(run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    def missing(*args: object, **kwargs: object) -> None:
        raise DataError("/elsewhere/CamVid: CamVid root not found")

    monkeypatch.setattr(plot_run, "build_dataset", missing)
    assert plot_run.main([str(run), "--out", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(CURVES)
    (warning,) = warnings_of(caplog)
    assert "CamVid root not found" in warning and "confusion.png, samples.png" in warning
    # a saved validate.py matrix still gives confusion.png without the data
    saved = run / "best.val.json"
    saved.write_text(json.dumps({"iou": {f"c{i}": 0.5 for i in range(6)}, "confusion": np.eye(6, dtype=int).tolist()}))
    try:
        assert plot_run.main([str(run), "--out", str(tmp_path / "b")]) == 0
    finally:
        saved.unlink()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(CURVES + ["confusion.png"])


def test_metrics_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run copied without checkpoints, still training (unterminated last line), no validation yet."""
    lines = [json.dumps({"type": "train", "epoch": 1, "iteration": i, "loss": 2.0 / i, "lr": 1e-3 * i}) for i in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"type": "tra')
    assert plot_run.main([str(tmp_path), "--out", str(tmp_path / "p")]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["loss.png", "lr.png"]
    assert len(warnings_of(caplog)) == 2  # no validation record; no checkpoint


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    def error(*argv: str) -> str:
        assert plot_run.main([*argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        return err

    assert "run folder not found" in error(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    assert "not a folder" in error(str(tmp_path / "file"))
    assert "metrics.jsonl: not found" in error(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text("")
    assert "empty" in error(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"type": "train", "iteration": 1, "loss": 1, "lr": 1}\nnot json\n')
    assert "metrics.jsonl:2: not a metrics record" in error(str(tmp_path))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert "pip install matplotlib" in error(str(tmp_path))


def test_samples_with_train_amp_auto_in_the_config(run: Path, tmp_path: Path) -> None:
    """``--set train.amp=auto`` (the default a user may restate) is resolved as validate.py does, not passed on raw."""
    assert plot_run.main([str(run), "--out", str(tmp_path), "--set", "train.amp=auto", "train.channels_last=auto"]) == 0
    check_png(tmp_path / "samples.png")
