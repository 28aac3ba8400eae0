"""PASCAL VOC 2012 + SBD loader on a tiny fixture in the official layouts; parity with torchvision;
download tested offline (``serve``, the loopback HTTP server, comes from conftest)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat
from torchvision.datasets import SBDataset, VOCSegmentation

from semseg.config import DataConfig
from semseg.errors import ConfigError, DataError
from semseg.loaders import build_dataset
from semseg.loaders._download import Resource
from semseg.loaders.voc import VOC, voc_colormap
from tests.fixtures.voc import (
    SBD_TRAIN, SBD_VAL, TRAIN_AUG, TRAIN_AUG_FROM_VOC, VOC_TRAIN, VOC_VAL,
    build_sbd, build_voc, object_class, sbd_mask, size_of, tar_release, voc_mask, write_voc_png,
)  # fmt: skip


def data(root: Path, **params: str) -> DataConfig:
    return DataConfig(name="voc", root=str(root), params=params)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The folder holding VOCdevkit/ and, beside it, benchmark_RELEASE/ (the default SBD place)."""
    parent = build_voc(tmp_path / "data")
    build_sbd(parent)
    return parent


def voc2012(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012"


def test_metadata_classes_and_devkit_palette() -> None:
    assert len(VOC.CLASSES) == len(VOC.PALETTE) == 21
    assert VOC.CLASSES[0] == "background" and VOC.CLASSES[15] == "person" and VOC.CLASSES[20] == "tvmonitor"
    assert VOC.PALETTE[:4] == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0))
    assert VOC.PALETTE[8] == (64, 0, 0) and VOC.PALETTE[15] == (192, 128, 128) and VOC.PALETTE[20] == (0, 64, 128)
    assert voc_colormap(256)[255] == (224, 224, 192)  # the cream border colour of index 255
    assert VOC.SPLITS == ("train", "val", "trainval", "sbd_train", "sbd_val", "train_aug")


def test_voc_pixels_land_on_their_ids_and_border_is_ignored(root: Path) -> None:
    ds = build_dataset(data(root), "train")
    assert ds.num_classes == 21 and [s.image.stem for s in ds.samples] == list(VOC_TRAIN)
    for i, name in enumerate(VOC_TRAIN):
        image, mask = ds[i]
        assert image.shape == (3, *size_of(name)) and mask.shape == size_of(name)
        assert np.array_equal(mask.numpy(), voc_mask(name))  # palette index = class id, 255 stays 255
        assert mask[0, :21].tolist() == list(range(21)) and mask[4, 5] == 255
        assert mask[6, 7] == object_class(name) and mask[-1, 0] == 0


@pytest.mark.parametrize(("split", "names"), [("val", VOC_VAL), ("trainval", tuple(sorted(VOC_TRAIN + VOC_VAL)))])
def test_voc_split_files_are_honoured(root: Path, split: str, names: tuple[str, ...]) -> None:
    ds = build_dataset(data(root), split)
    assert [s.image.stem for s in ds.samples] == list(names)
    assert all(s.mask == voc2012(root) / "SegmentationClass" / f"{s.image.stem}.png" for s in ds.samples)


@pytest.mark.parametrize(("split", "names"), [("sbd_train", SBD_TRAIN), ("sbd_val", SBD_VAL)])
def test_sbd_splits_read_the_mat_segmentation(root: Path, split: str, names: tuple[str, ...]) -> None:
    ds = build_dataset(data(root), split)
    sbd = root / "benchmark_RELEASE" / "dataset"
    assert [(s.image, s.mask) for s in ds.samples] == [(sbd / "img" / f"{n}.jpg", sbd / "cls" / f"{n}.mat") for n in names]
    for i, name in enumerate(names):
        assert np.array_equal(ds[i][1].numpy(), sbd_mask(name))


def test_train_aug_membership_and_mask_sources(root: Path) -> None:
    ds = build_dataset(data(root), "train_aug")
    assert [s.image.stem for s in ds.samples] == list(TRAIN_AUG)
    assert not set(VOC_VAL) & {s.image.stem for s in ds.samples}  # VOC val never leaks into training
    sbd = root / "benchmark_RELEASE" / "dataset"
    for i, sample in enumerate(ds.samples):
        name = sample.image.stem
        if name in TRAIN_AUG_FROM_VOC:  # 2007_000039, 2008_000002 are in SBD too: VOC's mask wins
            assert (sample.image, sample.mask) == (voc2012(root) / "JPEGImages" / f"{name}.jpg",
                                                   voc2012(root) / "SegmentationClass" / f"{name}.png")  # fmt: skip
            expected = voc_mask(name)
        else:
            assert (sample.image, sample.mask) == (sbd / "img" / f"{name}.jpg", sbd / "cls" / f"{name}.mat")
            expected = sbd_mask(name)
        assert np.array_equal(ds[i][1].numpy(), expected)


@pytest.mark.parametrize("split", ["train", "val", "trainval"])
def test_parity_with_torchvision_voc_segmentation(root: Path, split: str) -> None:
    ours = build_dataset(data(root), split)
    theirs = VOCSegmentation(str(root), year="2012", image_set=split, download=False)
    assert len(ours) == len(theirs) and [s.image for s in ours.samples] == [Path(p) for p in theirs.images]
    for i in range(len(ours)):
        image, mask = ours[i]
        ref_image, ref_mask = theirs[i]
        assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(ref_image))
        assert np.array_equal(mask.numpy(), np.asarray(ref_mask))


@pytest.mark.parametrize(("split", "image_set"), [("sbd_train", "train"), ("sbd_val", "val")])
def test_parity_with_torchvision_sbdataset(root: Path, split: str, image_set: str) -> None:
    ours = build_dataset(data(root), split)
    sbd = root / "benchmark_RELEASE" / "dataset"
    theirs = SBDataset(str(sbd), image_set=image_set, mode="segmentation", download=False)
    assert len(ours) == len(theirs) and [s.mask for s in ours.samples] == [Path(p) for p in theirs.masks]
    for i in range(len(ours)):
        image, mask = ours[i]
        ref_image, ref_mask = theirs[i]
        assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(ref_image))
        assert np.array_equal(mask.numpy(), np.asarray(ref_mask))
    boundaries = SBDataset(str(sbd), image_set=image_set, mode="boundaries")[0][1]  # the .mat is complete
    assert boundaries.shape == (20, *size_of(SBD_TRAIN[0] if image_set == "train" else SBD_VAL[0]))


def test_root_may_be_the_parent_vocdevkit_or_voc2012(root: Path) -> None:
    expected = [s.mask for s in build_dataset(data(root), "train_aug").samples]
    for other in (root / "VOCdevkit", voc2012(root)):
        ds = build_dataset(data(other), "train_aug")  # SBD still found next to VOCdevkit/
        assert [s.mask for s in ds.samples] == expected


def test_sbd_root_param_accepts_release_or_dataset_folder(root: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    (root / "benchmark_RELEASE").rename(moved)
    with pytest.raises(DataError, match=r"benchmark_RELEASE: SBD not found \(the default; set data.params.sbd_root\)"):
        build_dataset(data(root), "train_aug")
    for given in (str(moved), str(moved / "dataset"), "../elsewhere"):  # relative to data.root
        ds = build_dataset(data(root, sbd_root=given), "sbd_val")
        assert [s.image.stem for s in ds.samples] == list(SBD_VAL)
    with pytest.raises(DataError, match=r"nope: SBD not found \(data.params.sbd_root\); expected benchmark_RELEASE/"):
        build_dataset(data(root, sbd_root=str(tmp_path / "nope")), "sbd_train")
    with pytest.raises(ConfigError, match=r"data.params.sbd_dir: not a parameter of dataset 'voc'"):
        build_dataset(data(root, sbd_dir="x"), "train")


def test_sbd_splits_need_no_voc(tmp_path: Path) -> None:
    build_sbd(tmp_path)
    ds = build_dataset(data(tmp_path), "sbd_train")
    assert len(ds) == len(SBD_TRAIN)
    with pytest.raises(DataError, match=r"neither holds VOCdevkit/VOC2012/ nor is VOC2012/ itself"):
        build_dataset(data(tmp_path), "train_aug")


def test_unknown_split_and_bad_roots_are_one_line(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data split 'aug': VOC has train, val, trainval, sbd_train, sbd_val, train_aug"):
        build_dataset(data(root), "aug")
    with pytest.raises(DataError, match=r"nope: VOC root not found \(expected the folder holding VOCdevkit/VOC2012/"):
        build_dataset(data(tmp_path / "nope"), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: neither holds VOCdevkit/VOC2012/ nor is VOC2012/ itself; expected"):
        build_dataset(data(tmp_path / "empty"), "val")
    for f in (voc2012(root) / "SegmentationClass").iterdir():
        f.unlink()
    (voc2012(root) / "SegmentationClass").rmdir()
    with pytest.raises(DataError, match=r"VOC2012/SegmentationClass: folder not found; expected VOCdevkit/VOC2012/"):
        build_dataset(data(root), "val")


def test_missing_split_file_listed_image_and_mask_are_named(root: Path) -> None:
    lists = voc2012(root) / "ImageSets" / "Segmentation"
    (lists / "val.txt").unlink()
    with pytest.raises(DataError, match=r"ImageSets/Segmentation/val.txt: split file not found$"):
        build_dataset(data(root), "val")
    with pytest.raises(DataError, match=r"val.txt: split file not found$"):
        build_dataset(data(root), "train_aug")  # train_aug needs VOC val to exclude it
    (root / "benchmark_RELEASE" / "dataset" / "train.txt").unlink()
    with pytest.raises(DataError, match=r"benchmark_RELEASE/dataset/train.txt: split file not found$"):
        build_dataset(data(root), "sbd_train")
    (voc2012(root) / "SegmentationClass" / "2007_000039.png").unlink()
    with pytest.raises(DataError, match=r"JPEGImages/2007_000039.jpg: no mask at .*SegmentationClass/2007_000039.png$"):
        build_dataset(data(root), "train")
    (voc2012(root) / "JPEGImages" / "2007_000032.jpg").unlink()
    with pytest.raises(DataError, match=r"2007_000032.jpg: listed in split 'train' but not found$"):
        build_dataset(data(root), "train")
    (root / "benchmark_RELEASE" / "dataset" / "cls" / "2008_000102.mat").unlink()
    with pytest.raises(DataError, match=r"img/2008_000102.jpg: no mask at .*cls/2008_000102.mat$"):
        build_dataset(data(root), "sbd_val")


def test_bad_png_masks_are_named(root: Path) -> None:
    masks = voc2012(root) / "SegmentationClass"
    bad = voc_mask("2007_000032")
    bad[2, 2] = 40
    write_voc_png(masks / "2007_000032.png", bad)
    Image.fromarray(voc_mask("2007_000039"), "P").convert("RGB").save(masks / "2007_000039.png")
    write_voc_png(masks / "2008_000002.png", voc_mask("2008_000002")[:10])
    ds = build_dataset(data(root), "train")
    with pytest.raises(DataError, match=r"2007_000032.png: label values \[40\] are outside 0..20 and not the ignore"):
        ds[0]
    with pytest.raises(DataError, match=r"2007_000039.png: expected a palette \(mode P\) PNG of class indices, got mode RGB"):
        ds[1]
    with pytest.raises(DataError, match=r"2008_000002.png: mask is 24×10 but its image is 24×16"):
        ds[2]


def test_bad_mat_masks_are_named_and_skippable(root: Path) -> None:
    cls = root / "benchmark_RELEASE" / "dataset" / "cls"
    names = SBD_VAL  # 2008_000102, 2008_000002, 2008_000003
    seg = sbd_mask(names[0])
    seg[0, 0] = 40
    savemat(cls / f"{names[0]}.mat", {"GTcls": {"Segmentation": seg}})
    savemat(cls / f"{names[1]}.mat", {"Segmentation": sbd_mask(names[1])})  # not inside a GTcls struct
    (cls / f"{names[2]}.mat").write_bytes(b"not a mat file")
    ds = build_dataset(data(root), "sbd_val")
    with pytest.raises(DataError, match=rf"{names[0]}.mat: label values \[40\] are outside 0..20"):
        ds[0]
    with pytest.raises(DataError, match=rf"{names[1]}.mat: no GTcls.Segmentation struct field"):
        ds[1]
    with pytest.raises(DataError, match=rf"{names[2]}.mat: cannot read .mat file") as err:
        ds[2]
    assert "\n" not in str(err.value)
    savemat(cls / f"{names[1]}.mat", {"GTcls": {"Segmentation": sbd_mask(names[1])}})
    skipping = build_dataset(DataConfig(name="voc", root=str(root), on_error="skip"), "sbd_val")
    _, mask = skipping[0]  # bad label → skipped, the next sample is served
    assert np.array_equal(mask.numpy(), sbd_mask(names[1])) and skipping.skipped == 1


def test_resources_are_the_official_archives() -> None:
    voc, sbd = VOC.RESOURCES
    assert voc.url.endswith("/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar")
    assert voc.md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert sbd.url.endswith("/grouping/semantic_contours/benchmark.tgz")
    assert sbd.md5 == "82b4d87ceb2ed10f6038a1cba92111cb"


def _serve_archives(tmp_path: Path, serve: str, wrong_md5: bool = False) -> tuple[Resource, Resource]:
    src = tmp_path / "src"
    build_voc(src)
    build_sbd(src)
    archives = (tar_release(src, "VOCdevkit", tmp_path / "VOCtrainval_11-May-2012.tar"),
                tar_release(src, "benchmark_RELEASE", tmp_path / "benchmark.tgz"))  # fmt: skip
    md5 = ["0" * 32 if wrong_md5 else hashlib.md5(a.read_bytes()).hexdigest() for a in archives]
    return tuple(Resource(f"{serve}/{a.name}", m) for a, m in zip(archives, md5))


def test_download_unpacks_both_archives_into_a_usable_root(
    tmp_path: Path, serve: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(VOC, "RESOURCES", _serve_archives(tmp_path, serve))
    root = VOC.download(tmp_path / "data")
    assert root == tmp_path / "data"
    assert (root / "VOCdevkit" / "VOC2012" / "JPEGImages").is_dir() and (root / "benchmark_RELEASE" / "dataset").is_dir()
    ds = build_dataset(data(root), "train_aug")
    assert [s.image.stem for s in ds.samples] == list(TRAIN_AUG)
    image, mask = ds[0]
    assert np.array_equal(mask.numpy(), voc_mask(TRAIN_AUG[0]))
    source = tmp_path / "src" / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{TRAIN_AUG[0]}.jpg"
    assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(Image.open(source).convert("RGB")))


def test_download_with_a_wrong_checksum_is_one_line(
    tmp_path: Path, serve: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(VOC, "RESOURCES", _serve_archives(tmp_path, serve, wrong_md5=True))
    with pytest.raises(DataError, match="VOCtrainval_11-May-2012.tar") as err:
        VOC.download(tmp_path / "data")
    assert "\n" not in str(err.value)


def test_loaders_command_counts_every_split(root: Path, capsys: pytest.CaptureFixture) -> None:
    from semseg.loaders.__main__ import main

    assert main([str(root), "--dataset", "voc", "--sample", "2"]) == 0
    out = capsys.readouterr().out
    for split, count in (("train", 3), ("val", 2), ("trainval", 5), ("sbd_train", 4), ("sbd_val", 3), ("train_aug", 6)):
        assert f"{split}: {count} images, {count} masks" in out
    assert "21 classes: background, aeroplane" in out
