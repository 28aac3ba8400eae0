"""Mapillary Vistas loader on a tiny fixture in the official v2.0-release layout (both label versions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semseg.config import DataConfig, load_config
from semseg.errors import ConfigError, DataError
from semseg.loaders import build_dataset
from semseg.loaders.mapillary import MapillaryVistas
from semseg.visualize import colorize
from tests.conftest import REPO
from tests.fixtures.mapillary import IDS, SIZE, build_mapillary, label_pattern, palette_png


def data(root: Path, **params: object) -> DataConfig:
    return DataConfig(name="mapillary", root=str(root), params=dict(params))


@pytest.fixture
def vistas(tmp_path: Path) -> Path:
    return build_mapillary(tmp_path / "mapillary")


def test_v12_indices_are_classes_and_unlabeled_is_ignored(vistas: Path) -> None:
    ds = build_dataset(data(vistas, version="v1.2"), "train")
    assert len(ds) == 3 and ds.num_classes == 5
    assert ds.CLASSES == ("Bird", "Road", "Person", "Sky", "Car")
    assert ds.PALETTE == ((165, 42, 42), (128, 64, 128), (220, 20, 60), (70, 130, 180), (0, 0, 142))
    assert [s.image.name for s in ds.samples] == sorted(f"{i}.jpg" for i in IDS["training"])
    index = ds.samples.index(next(s for s in ds.samples if s.image.stem == IDS["training"][1]))
    image, mask = ds[index]
    assert image.shape == (3, *SIZE) and mask.shape == SIZE
    expected = label_pattern("v1.2", 1).astype(np.int64)
    expected[expected == 5] = 255  # void--unlabeled: evaluate false
    assert np.array_equal(mask.numpy(), expected)
    assert set(np.unique(mask.numpy())) == {0, 1, 2, 3, 4, 255}


def test_v20_renumbers_around_unevaluated_labels_and_disambiguates_names(vistas: Path) -> None:
    ds = build_dataset(data(vistas, version="v2.0"), "val")
    assert len(ds) == 2 and ds.num_classes == 6
    assert ds.CLASSES == (
        "Road", "marking--continuous--dashed", "marking-only--continuous--dashed",
        "Traffic Light - General (Upright)", "Traffic Light - Pedestrians", "Sky",
    )  # fmt: skip
    assert ds.PALETTE[3] == ds.PALETTE[4] == (250, 170, 30)  # v2.0 repeats colours: labels are indices, not colours
    stem = ds.samples[0].image.stem
    index = np.asarray(Image.open(vistas / "validation" / "v2.0" / "labels" / f"{stem}.png"))
    expected = np.array([0, 1, 2, 3, 4, 255, 5, 255])[index]  # index 5 (ground) and 7 (unlabeled) → ignore
    assert np.array_equal(ds.load_mask(0), expected)


def test_versions_do_not_share_class_lists(vistas: Path) -> None:
    v1 = build_dataset(data(vistas, version="v1.2"), "train")
    v2 = build_dataset(data(vistas, version="v2.0"), "train")
    assert v1.num_classes == 5 and v2.num_classes == 6
    assert MapillaryVistas.CLASSES == () and MapillaryVistas.PALETTE == ()  # nothing leaks onto the class


def test_parity_with_the_official_demo_reading(vistas: Path) -> None:
    """demo.py reads np.array(Image.open(label)) as indices into config['labels'] and paints label['color']."""
    for version in ("v1.2", "v2.0"):
        labels = json.loads((vistas / f"config_{version}.json").read_text())["labels"]
        ds = build_dataset(data(vistas, version=version), "train")
        for i, sample in enumerate(ds.samples):
            official = np.array(Image.open(sample.mask))
            painted = np.zeros((*official.shape, 3), dtype=np.uint8)
            for label_id, label in enumerate(labels):
                painted[official == label_id] = label["color"]
            ours = ds.load_mask(i)
            evaluated = np.array([label["evaluate"] for label in labels])[official]
            assert np.array_equal(ours == 255, ~evaluated)
            assert np.array_equal(colorize(ours, ds.PALETTE)[evaluated], painted[evaluated])


def test_test_split_has_no_labels_and_serves_images(vistas: Path) -> None:
    ds = build_dataset(data(vistas), "test")
    assert len(ds) == 2 and not ds.has_masks
    image, mask = ds[0]
    assert image.shape == (3, *SIZE) and (mask == 255).all()


def test_default_version_is_v12(vistas: Path) -> None:
    assert build_dataset(data(vistas), "train").num_classes == 5


def test_bad_version_is_a_config_error() -> None:
    message = r"^data.params.version: 'v2' is not a Mapillary Vistas version \(v1.2, v2.0\)$"
    with pytest.raises(ConfigError, match=message):
        build_dataset(data(Path("/nonexistent"), version="v2"), "train")


def test_missing_root_config_and_folders_are_named(vistas: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope: Mapillary Vistas root not found \(expected config_<version>.json"):
        build_dataset(data(tmp_path / "nope"), "train")
    (vistas / "config_v2.0.json").unlink()
    with pytest.raises(DataError, match=r"config_v2.0.json: Mapillary Vistas config not found"):
        build_dataset(data(vistas, version="v2.0"), "train")
    with pytest.raises(DataError, match=r"data split 'training': Mapillary Vistas has train, val, test"):
        build_dataset(data(vistas), "training")
    for path in sorted((vistas / "validation" / "v1.2" / "labels").iterdir()):
        path.unlink()
    (vistas / "validation" / "v1.2" / "labels").rmdir()
    with pytest.raises(DataError, match=r"validation/v1.2/labels: v1.2 label folder not found"):
        build_dataset(data(vistas), "val")
    for path in sorted((vistas / "training" / "images").iterdir()):
        path.unlink()
    (vistas / "training" / "images").rmdir()
    with pytest.raises(DataError, match=r"training/images: folder not found; expected the Mapillary Vistas layout"):
        build_dataset(data(vistas), "train")


def test_malformed_config_is_named(vistas: Path) -> None:
    (vistas / "config_v1.2.json").write_text("{not json")
    with pytest.raises(DataError, match=r"config_v1.2.json: not valid JSON"):
        build_dataset(data(vistas), "train")
    (vistas / "config_v1.2.json").write_text(json.dumps({"labels": [{"name": "x"}]}))
    with pytest.raises(DataError, match=r"config_v1.2.json: labels\[0\] has no 'color'"):
        build_dataset(data(vistas), "train")


def test_image_without_label_is_named(vistas: Path) -> None:
    first = IDS["training"][0]
    (vistas / "training" / "v1.2" / "labels" / f"{first}.png").unlink()
    with pytest.raises(DataError, match=rf"{first}.jpg: no mask at .*v1.2/labels/{first}.png"):
        build_dataset(data(vistas), "train")


def test_label_index_beyond_the_config_is_named(vistas: Path) -> None:
    bad = label_pattern("v1.2", 0)
    bad[3, 4] = 70  # the fixture's v1.2 config has 6 entries (the real one 66)
    palette_png(bad, "v1.2").save(vistas / "training" / "v1.2" / "labels" / f"{IDS['training'][0]}.png")
    ds = build_dataset(data(vistas), "train")
    i = [s.image.stem for s in ds.samples].index(IDS["training"][0])
    message = rf"{IDS['training'][0]}.png: label values \[70\] are outside 0..5 of config_v1.2.json"
    with pytest.raises(DataError, match=message):
        ds[i]


def test_colour_label_and_wrong_size_are_named(vistas: Path) -> None:
    label = vistas / "training" / "v1.2" / "labels" / f"{IDS['training'][0]}.png"
    palette_png(label_pattern("v1.2", 0), "v1.2").convert("RGB").save(label)
    ds = build_dataset(data(vistas), "train")
    i = [s.image.stem for s in ds.samples].index(IDS["training"][0])
    with pytest.raises(DataError, match=r"expected an 8-bit label-index PNG \(mode P\), got mode RGB"):
        ds[i]
    palette_png(label_pattern("v1.2", 0)[:10], "v1.2").save(label)
    with pytest.raises(DataError, match=rf"{label.name}: mask is 24×10 but its image is 24×16"):
        ds[i]


def test_download_needs_registration(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="registration required"):
        MapillaryVistas.download(tmp_path)


def test_recipe_loads_and_names_this_dataset() -> None:
    cfg = load_config(REPO / "configs" / "pspnet50_mapillary.yml")
    assert cfg.data.name == "mapillary" and cfg.data.params.get("version") in ("v1.2", "v2.0")
    assert cfg.augment.crop is not None and cfg.data.val_batch_size == 1
