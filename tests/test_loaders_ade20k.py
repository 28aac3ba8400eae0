"""ADE20K SceneParsing loader on a tiny fixture in the official layout; download tested offline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semseg.config import DataConfig
from semseg.errors import DataError
from semseg.loaders import build_dataset
from semseg.loaders._download import Resource
from semseg.loaders.ade20k import ADE20K
from tests.fixtures.ade20k import SIZE, annotation_pattern, build_ade20k, image_name, zip_ade20k


def data(root: Path) -> DataConfig:
    return DataConfig(name="ade20k", root=str(root))


def expected_ids(raw: np.ndarray) -> np.ndarray:
    return np.where(raw == 0, 255, raw.astype(np.int64) - 1)


@pytest.fixture
def ade(tmp_path: Path) -> Path:
    return build_ade20k(tmp_path)


def test_metadata() -> None:
    assert len(ADE20K.CLASSES) == len(ADE20K.PALETTE) == len(set(ADE20K.CLASSES)) == 150
    assert ADE20K.CLASSES[:3] == ("wall", "building", "sky") and ADE20K.CLASSES[-1] == "flag"
    assert ADE20K.PALETTE[0] == (120, 120, 120) and ADE20K.PALETTE[-1] == (92, 0, 255)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ADE20K.PALETTE)


def test_zero_is_ignored_and_classes_shift_down(ade: Path) -> None:
    ds = build_dataset(data(ade), "train")
    assert len(ds) == 3 and ds.num_classes == 150
    assert [s.image.name for s in ds.samples] == [f"{image_name('training', i)}.jpg" for i in range(3)]
    image, mask = ds[2]
    assert image.shape == (3, *SIZE) and mask.shape == SIZE
    assert mask[0, :4].tolist() == [255, 0, 149, 12]  # other, wall, flag, person
    assert np.array_equal(mask.numpy(), expected_ids(annotation_pattern(2)))
    assert set(np.unique(mask.numpy())) == set(range(150)) | {255}


@pytest.mark.parametrize(("split", "count"), [("val", 2), ("validation", 2), ("training", 3)])
def test_split_names_map_to_release_folders(ade: Path, split: str, count: int) -> None:
    ds = build_dataset(data(ade), split)
    assert len(ds) == count
    folder = "training" if count == 3 else "validation"
    assert all(s.image.parent == ade / "images" / folder for s in ds.samples)
    assert all(s.mask.parent == ade / "annotations" / folder for s in ds.samples)


def test_unknown_split_lists_the_valid_ones(ade: Path) -> None:
    with pytest.raises(DataError, match=r"data split 'test': ADE20K has train, val \(or training, validation\)"):
        build_dataset(data(ade), "test")


def test_missing_root_folders_and_parent_root_are_named(ade: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope: ADE20K root not found \(expected images/\{training,validation\}"):
        build_dataset(data(tmp_path / "nope"), "train")
    with pytest.raises(DataError, match=r"no images/ folder; set data.root to .*ADEChallengeData2016$"):
        build_dataset(data(tmp_path), "train")  # the parent of the unpacked folder
    for sub in ("annotations/validation", "images/validation"):
        for f in (ade / sub).iterdir():
            f.unlink()
        (ade / sub).rmdir()
        with pytest.raises(DataError, match=rf"{sub}: folder not found; expected the ADE20K layout"):
            build_dataset(data(ade), "val")


def test_image_without_annotation_is_named(ade: Path) -> None:
    name = image_name("training", 1)
    (ade / "annotations" / "training" / f"{name}.png").unlink()
    with pytest.raises(DataError, match=rf"{name}.jpg: no mask at .*annotations/training/{name}.png$"):
        build_dataset(data(ade), "train")


def test_out_of_range_value_is_named(ade: Path) -> None:
    raw = annotation_pattern(0)
    raw[4, 4] = 151
    Image.fromarray(raw, "L").save(ade / "annotations" / "training" / f"{image_name('training', 0)}.png")
    ds = build_dataset(data(ade), "train")
    with pytest.raises(DataError, match=r"ADE_train_00000001.png: label values \[151\] are outside 0..150"):
        ds[0]


def test_colour_annotation_and_annotation_of_another_size_are_named(ade: Path) -> None:
    ann = ade / "annotations" / "training"
    Image.new("RGB", SIZE[::-1]).save(ann / f"{image_name('training', 0)}.png")
    Image.fromarray(annotation_pattern(1)[:10], "L").save(ann / f"{image_name('training', 1)}.png")
    ds = build_dataset(data(ade), "train")
    with pytest.raises(DataError, match=r"ADE_train_00000001.png: expected a single-channel id mask, got mode RGB"):
        ds[0]
    with pytest.raises(DataError, match=r"ADE_train_00000002.png: mask is 24×10 but its image is 24×16"):
        ds[1]


def test_resource_is_the_official_zip() -> None:
    (res,) = ADE20K.RESOURCES
    assert res.url == "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
    assert res.md5 == "7328b3957e407ddae1d3cbf487f149ef"


def test_download_unpacks_and_returns_the_dataset_folder(
    tmp_path: Path, serve: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = zip_ade20k(build_ade20k(tmp_path / "src"), tmp_path / "ADEChallengeData2016.zip")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(ADE20K, "RESOURCES", (Resource(f"{serve}/{archive.name}", md5),))
    root = ADE20K.download(tmp_path / "data")
    assert root == tmp_path / "data" / "ADEChallengeData2016"
    ds = build_dataset(data(root), "val")
    assert len(ds) == 2 and np.array_equal(ds[1][1].numpy(), expected_ids(annotation_pattern(1)))


def test_download_with_a_wrong_checksum_is_one_line(
    tmp_path: Path, serve: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = zip_ade20k(build_ade20k(tmp_path / "src"), tmp_path / "ADEChallengeData2016.zip")
    monkeypatch.setattr(ADE20K, "RESOURCES", (Resource(f"{serve}/{archive.name}", "0" * 32),))
    with pytest.raises(DataError, match="ADEChallengeData2016.zip") as err:
        ADE20K.download(tmp_path / "data")
    assert "\n" not in str(err.value)
