"""Cityscapes loader on a tiny fixture in the official layout; parity with cityscapesScripts and torchvision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semseg.config import DataConfig
from semseg.errors import ConfigError, DataError
from semseg.loaders import build_dataset
from semseg.loaders.cityscapes import LABEL_TO_TRAIN_ID, Cityscapes
from tests.fixtures.cityscapes import SIZE, build_cityscapes, frame_name, label_pattern

labels = pytest.importorskip("cityscapesscripts.helpers.labels")


def official_lut() -> np.ndarray:
    """labelId (as uint8) → trainId from cityscapesScripts; unknown ids and trainIds -1/255 → 255."""
    lut = np.full(256, 255, dtype=np.uint8)
    for label in labels.labels:
        if 0 <= label.trainId < 19:
            lut[label.id % 256] = label.trainId  # license plate: id -1 is 255 in a uint8 file
    return lut


def data(root: Path, **params: object) -> DataConfig:
    return DataConfig(name="cityscapes", root=str(root), params=dict(params))


@pytest.fixture
def cityscapes(tmp_path: Path) -> Path:
    return build_cityscapes(tmp_path / "cityscapes")


def test_lookup_table_equals_cityscapesscripts_for_all_256_values() -> None:
    assert LABEL_TO_TRAIN_ID.shape == (256,)
    assert np.array_equal(LABEL_TO_TRAIN_ID, official_lut())


def test_classes_and_palette_follow_the_official_train_ids() -> None:
    official = [labels.trainId2label[t] for t in range(19)]
    assert Cityscapes.CLASSES == tuple(label.name for label in official)
    assert Cityscapes.PALETTE == tuple(label.color for label in official)


def test_label_ids_become_train_ids(cityscapes: Path) -> None:
    ds = build_dataset(data(cityscapes), "train")
    assert len(ds) == 3 and ds.num_classes == 19
    assert [s.image.parent.name for s in ds.samples] == ["aachen", "aachen", "bochum"]
    image, mask = ds[1]
    assert image.shape == (3, *SIZE) and mask.shape == SIZE
    m = mask.numpy()
    assert m[0, :5].tolist() == [0, 13, 255, 255, 255]  # road, car, parking, unlabeled, license plate
    assert np.array_equal(m, official_lut()[label_pattern(1)])
    assert set(np.unique(m)) == set(range(19)) | {255}


def test_train_ids_file_is_read_when_present(cityscapes: Path) -> None:
    city = cityscapes / "gtFine" / "train" / "aachen"
    train_ids = np.full(SIZE, 5, np.uint8)
    train_ids[0, 0] = 255
    Image.fromarray(train_ids, "L").save(city / f"{frame_name('aachen', 19)}_gtFine_labelTrainIds.png")
    ds = build_dataset(data(cityscapes), "train")
    assert ds.samples[0].mask.name.endswith("_gtFine_labelTrainIds.png")
    assert np.array_equal(ds[0][1].numpy(), train_ids)
    assert ds.samples[1].mask.name.endswith("_gtFine_labelIds.png")  # no trainIds file for this frame
    official = build_dataset(data(cityscapes, use_train_ids=False), "train")
    assert np.array_equal(official[0][1].numpy(), official_lut()[label_pattern(0)])


def test_train_ids_file_is_validated(cityscapes: Path) -> None:
    bad = np.zeros(SIZE, np.uint8)
    bad[3, 3] = 19
    path = cityscapes / "gtFine" / "val" / "frankfurt" / f"{frame_name('frankfurt', 294)}_gtFine_labelTrainIds.png"
    Image.fromarray(bad, "L").save(path)
    with pytest.raises(DataError, match=r"frankfurt_000000_000294_gtFine_labelTrainIds.png: label values \[19\]"):
        build_dataset(data(cityscapes), "val")[0]


def test_test_split_serves_images_with_all_ignore_masks(cityscapes: Path) -> None:
    ds = build_dataset(data(cityscapes), "test")
    assert len(ds) == 2 and not ds.has_masks
    image, mask = ds[0]
    assert image.shape == (3, *SIZE) and (mask == 255).all()


def test_coarse_annotations_and_train_extra(tmp_path: Path) -> None:
    root = build_cityscapes(tmp_path / "cityscapes", coarse=True)
    extra = build_dataset(data(root, annotations="coarse"), "train_extra")
    assert len(extra) == 2 and extra.samples[0].mask.name == f"{frame_name('augsburg', 5)}_gtCoarse_labelIds.png"
    assert np.array_equal(extra[1][1].numpy(), official_lut()[label_pattern(1)])
    coarse_train = build_dataset(data(root, annotations="coarse"), "train")
    assert len(coarse_train) == 3 and "gtCoarse" in coarse_train.samples[0].mask.parts
    with pytest.raises(DataError, match=r"split 'test': Cityscapes coarse annotations have train, train_extra, val"):
        build_dataset(data(root, annotations="coarse"), "test")
    with pytest.raises(DataError, match=r"data split 'train_extra': Cityscapes fine annotations have train, val, test"):
        build_dataset(data(root), "train_extra")


def test_bad_annotations_param_is_named(cityscapes: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.params.annotations: expected fine or coarse, got 'fin'"):
        build_dataset(data(cityscapes, annotations="fin"), "train")


def test_missing_root_and_folders_are_named(cityscapes: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope: Cityscapes root not found \(expected leftImg8bit/<split>/<city>/"):
        build_dataset(data(tmp_path / "nope"), "train")
    with pytest.raises(DataError, match=r"leftImg8bit/train_extra: folder not found"):
        build_dataset(data(cityscapes, annotations="coarse"), "train_extra")
    with pytest.raises(DataError, match=r"gtCoarse/train: annotation folder not found; unpack gtCoarse.zip"):
        build_dataset(data(cityscapes, annotations="coarse"), "train")


def test_image_without_mask_is_named(cityscapes: Path) -> None:
    name = frame_name("bochum", 313)
    (cityscapes / "gtFine" / "train" / "bochum" / f"{name}_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match=rf"{name}_leftImg8bit.png: no mask at .*{name}_gtFine_labelIds.png$"):
        build_dataset(data(cityscapes), "train")


def test_unknown_label_id_is_named(cityscapes: Path) -> None:
    bad = label_pattern(0)
    bad[5, 5] = 40
    path = cityscapes / "gtFine" / "train" / "aachen" / f"{frame_name('aachen', 19)}_gtFine_labelIds.png"
    Image.fromarray(bad, "L").save(path)
    with pytest.raises(DataError, match=r"000019_gtFine_labelIds.png: label values \[40\] are not Cityscapes labelIds"):
        build_dataset(data(cityscapes), "train")[0]


def test_colour_mask_and_mask_of_another_size_are_named(cityscapes: Path) -> None:
    city = cityscapes / "gtFine" / "train" / "aachen"
    colour = city / f"{frame_name('aachen', 19)}_gtFine_color.png"
    colour.replace(city / f"{frame_name('aachen', 19)}_gtFine_labelIds.png")
    Image.fromarray(label_pattern(1)[:10], "L").save(city / f"{frame_name('aachen', 20)}_gtFine_labelIds.png")
    ds = build_dataset(data(cityscapes), "train")
    with pytest.raises(DataError, match=r"000019_gtFine_labelIds.png: expected a single-channel id mask, got mode RGB"):
        ds[0]
    with pytest.raises(DataError, match=r"000020_gtFine_labelIds.png: mask is 24×10 but its image is 24×16"):
        ds[1]


def test_no_scripted_download() -> None:
    with pytest.raises(DataError, match="Cityscapes has no scripted download"):
        Cityscapes.download("unused")


@pytest.mark.parametrize(("mode", "split"), [("fine", "train"), ("fine", "val"), ("coarse", "train_extra")])
def test_parity_with_torchvision(tmp_path: Path, mode: str, split: str) -> None:
    """Same images as torchvision's reader; its labelIds target, mapped with its own class table, equals ours."""
    from torchvision.datasets import Cityscapes as TVCityscapes

    root = build_cityscapes(tmp_path / "cityscapes", coarse=True)
    theirs = TVCityscapes(str(root), split=split, mode=mode, target_type="semantic")
    tv_lut = np.full(256, 255, dtype=np.uint8)
    for cls in TVCityscapes.classes:
        if 0 <= cls.train_id < 19:
            tv_lut[cls.id % 256] = cls.train_id
    ours = build_dataset(data(root, annotations=mode), split)
    by_image = {Path(p): i for i, p in enumerate(theirs.images)}
    assert set(by_image) == {s.image for s in ours.samples}
    assert tuple(c.name for c in TVCityscapes.classes if 0 <= c.train_id < 19) == Cityscapes.CLASSES
    for index, sample in enumerate(ours.samples):
        image, target = theirs[by_image[sample.image]]
        our_image, our_mask = ours[index]
        assert np.array_equal(our_image.permute(1, 2, 0).numpy(), np.asarray(image))
        assert np.array_equal(our_mask.numpy(), tv_lut[np.asarray(target)])
