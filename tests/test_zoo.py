"""The model zoo: tools/zoo.py's files, and every file shipped in zoo/ held to its README entry and its record."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import validate
from tests.conftest import CAMVID_ROOT, REPO, load_script, needs_camvid
from tests.test_pipeline import run_train, test_script

zoo_tool = load_script("tools/zoo")
ZOO = REPO / "zoo"
README = (ZOO / "README.md").read_text() if (ZOO / "README.md").is_file() else ""
SHIPPED = {"enet_camvid.pt": 2 * 2**20, "erfnet_camvid.pt": 10 * 2**20}  # what issue 14 asked for, and its size limits


def test_every_shipped_file_has_a_readme_entry_and_the_readme_names_no_missing_file() -> None:
    listed = set(re.findall(r"^### (\S+\.pt)$", README, re.M))
    assert set(SHIPPED) <= listed
    assert listed == {p.name for p in ZOO.glob("*.pt")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("zoo")
    run = run_train(tmp, "train.epochs=2")
    out = tmp / "synthetic.pt"
    assert zoo_tool.main([str(run / "best.pt"), "--out", str(out), "--data-root", "", "--recipe-root", ""]) == 0
    return run / "best.pt", out


def test_the_tool_keeps_weights_in_half_precision_and_drops_the_training_state(exported: tuple[Path, Path]) -> None:
    source, out = exported
    entry = torch.load(out, map_location="cpu", weights_only=False)
    original = torch.load(source, map_location="cpu", weights_only=False)
    assert {"optimizer", "rng", "state", "scaler"}.isdisjoint(entry)
    assert entry["model"].keys() == original["model"].keys()
    for key, value in entry["model"].items():
        if original["model"][key].is_floating_point():
            assert value.dtype == torch.float16
            torch.testing.assert_close(value.float(), original["model"][key], rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(value, original["model"][key])  # e.g. BatchNorm's num_batches_tracked
    assert entry["config"]["train"]["amp"] == "auto" and entry["config"]["train"]["channels_last"] == "auto"
    assert entry["config"]["train"]["resume"] is None
    assert out.stat().st_size < source.stat().st_size / 2


def test_the_record_is_validate_py_on_the_file_itself(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = exported
    record = torch.load(out, map_location="cpu", weights_only=False)["record"]
    assert validate.main(["--checkpoint", str(out), "--out", str(tmp_path / "m.json")]) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert record["miou"] == pytest.approx(again["miou"], abs=1e-9)
    assert record["iou"] == pytest.approx(again["iou"], abs=1e-9)
    assert record["split"] == "val" and record["numeric_path"].startswith("numeric path: ")


def street_photo(path: Path, size: tuple[int, int] = (360, 480)) -> Path:
    """A photo-like RGB JPEG (sky over road, a dark box for a car), not from any dataset."""
    h, w = size
    image = np.zeros((h, w, 3), np.uint8)
    image[: h // 3] = (130, 160, 200)
    image[h // 3 :] = (90, 90, 95)
    image[h // 2 : h // 2 + 60, w // 3 : w // 3 + 120] = (30, 30, 40)
    image = np.clip(image + np.random.default_rng(0).normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path, quality=90)
    return path


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_file_is_small_half_precision_and_predicts_a_photo_with_test_py(name: str, tmp_path: Path) -> None:
    path = ZOO / name
    assert path.is_file(), f"{path} is not in the repository"
    assert path.stat().st_size <= SHIPPED[name]
    entry = torch.load(path, map_location="cpu", weights_only=False)
    assert all(v.dtype in (torch.float16, torch.bfloat16) for v in entry["model"].values() if v.is_floating_point())
    photo = street_photo(tmp_path / "street.jpg")
    out = tmp_path / "pred"
    assert test_script.main(["--checkpoint", str(path), "--input", str(photo), "--out", str(out)]) == 0
    ids = np.asarray(Image.open(out / "ids" / "street.png"))
    assert ids.shape == (360, 480) and int(ids.max()) < len(entry["classes"])
    assert Image.open(out / "color" / "street.png").size == (480, 360)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_readme_states_the_recorded_numbers(name: str) -> None:
    record = torch.load(ZOO / name, map_location="cpu", weights_only=False)["record"]
    section = README.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
    assert f"**{100 * record['miou']:.2f} % mIoU**" in section
    for cls, iou in record["iou"].items():
        assert f"| {cls} | {100 * iou:.2f} |" in section


@needs_camvid
@pytest.mark.parametrize("name", [n for n in sorted(SHIPPED) if n.endswith("_camvid.pt")])
def test_validate_py_reproduces_the_recorded_camvid_score(name: str, tmp_path: Path) -> None:
    path = ZOO / name
    record = torch.load(path, map_location="cpu", weights_only=False)["record"]
    out = tmp_path / "m.json"
    assert validate.main(["--checkpoint", str(path), "--set", f"data.root={CAMVID_ROOT}", "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    from semseg.config import config_from_dict
    from semseg.precision import resolve_precision

    cfg = config_from_dict(torch.load(path, map_location="cpu", weights_only=False)["config"])
    same_path = resolve_precision(cfg.train.amp, cfg.train.channels_last, torch.device("cpu"), cfg.model.name).describe() == record["numeric_path"]
    assert again["miou"] == pytest.approx(record["miou"], abs=5e-4 if same_path else 5e-3)
