"""CamVid's original 32-class release read as the 11-class benchmark (``camvid32``), on a tiny fixture."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from semseg.config import DataConfig
from semseg.errors import DataError
from semseg.loaders import build_dataset
from semseg.loaders.camvid import COLORS_32, CamVid, CamVid32, segnet_split
from tests.conftest import CAMVID_ROOT, needs_camvid
from tests.fixtures.camvid32 import FRAMES, LABEL_COLORS, SIZE, build_camvid32, class_pattern, colour_label

# The 11-class grouping as published with the benchmark (Sturgess et al. 2009; SegNet), by name.
EXPECTED_11 = {
    "Sky": "sky",
    "Bridge": "building", "Building": "building", "Wall": "building", "Tunnel": "building", "Archway": "building",
    "Column_Pole": "pole", "TrafficCone": "pole",
    "Road": "road", "LaneMkgsDriv": "road", "LaneMkgsNonDriv": "road",
    "Sidewalk": "pavement", "ParkingBlock": "pavement", "RoadShoulder": "pavement",
    "Tree": "tree", "VegetationMisc": "tree",
    "SignSymbol": "sign_symbol", "Misc_Text": "sign_symbol", "TrafficLight": "sign_symbol",
    "Fence": "fence",
    "Car": "car", "SUVPickupTruck": "car", "Truck_Bus": "car", "Train": "car", "OtherMoving": "car",
    "Pedestrian": "pedestrian", "Child": "pedestrian", "CartLuggagePram": "pedestrian", "Animal": "pedestrian",
    "Bicyclist": "bicyclist", "MotorcycleScooter": "bicyclist",
    "Void": None,
}  # fmt: skip


def expected_ids(pattern: np.ndarray) -> np.ndarray:
    lut = np.array(
        [255 if EXPECTED_11[name] is None else CamVid.CLASSES.index(EXPECTED_11[name]) for name, _ in LABEL_COLORS]
    )
    return lut[pattern]


def data(root: Path, **params: object) -> DataConfig:
    return DataConfig(name="camvid32", root=str(root), params=dict(params))


@pytest.fixture
def camvid32(tmp_path: Path) -> Path:
    return build_camvid32(tmp_path / "CamVid32")


def test_colour_table_matches_label_colors_txt(camvid32: Path) -> None:
    published = []
    for line in (camvid32 / "label_colors.txt").read_text().splitlines():
        rgb, name = line.split("\t")
        published.append((name, tuple(int(v) for v in rgb.split())))
    assert list(COLORS_32) == published and len(published) == 32
    assert set(EXPECTED_11) == {name for name, _ in published}


def test_same_classes_palette_and_splits_as_the_segnet_layout() -> None:
    assert CamVid32.CLASSES == CamVid.CLASSES and CamVid32.PALETTE == CamVid.PALETTE
    assert CamVid32.SPLITS == CamVid.SPLITS == ("train", "val", "test")


def test_every_32_class_colour_lands_on_its_11_class_id(camvid32: Path) -> None:
    ds = build_dataset(data(camvid32), "train")
    assert ds.num_classes == 11
    for i, sample in enumerate(ds.samples):
        index = list(FRAMES).index(sample.image.stem)
        image, mask = ds[i]
        assert image.shape == (3, *SIZE) and mask.shape == SIZE
        assert np.array_equal(mask.numpy(), expected_ids(class_pattern(index)))
    m = ds.load_mask(0)
    assert set(np.unique(m)) == set(range(11)) | {255}  # all 11 classes and void → ignore


def test_segnet_split_rule_on_the_fixture(camvid32: Path) -> None:
    for split in ("train", "val", "test"):
        ds = build_dataset(data(camvid32), split)
        assert [s.image.stem for s in ds.samples] == sorted(f for f, s in FRAMES.items() if s == split)
        assert all(s.mask.name == f"{s.image.stem}_L.png" for s in ds.samples)
    assert segnet_split("0016E5_07961") == "val" and segnet_split("0001TP_010380") == "test"
    assert segnet_split("not_a_frame") is None


@needs_camvid
def test_split_rule_reproduces_the_segnet_lists() -> None:
    for split, count in (("train", 367), ("val", 101), ("test", 233)):
        lines = (CAMVID_ROOT / f"{split}.txt").read_text().split("\n")
        stems = [Path(line.split()[0]).stem for line in lines if line.strip()]
        assert len(stems) == count and all(segnet_split(stem) == split for stem in stems)
        on_disk = sorted(p.stem for p in (CAMVID_ROOT / split).glob("*.png"))
        assert on_disk == sorted(stems)  # the SegNet frames carry the release's names


def test_split_dir_reads_segnet_style_lists(camvid32: Path) -> None:
    lists = camvid32 / "lists"
    lists.mkdir()
    (lists / "val.txt").write_text(
        "/SegNet/CamVid/val/0016E5_08159.png /SegNet/CamVid/valannot/0016E5_08159.png\n"
        "/SegNet/CamVid/val/0001TP_006690.png /SegNet/CamVid/valannot/0001TP_006690.png\n\n"
    )
    ds = build_dataset(data(camvid32, split_dir="lists"), "val")
    assert [s.image.name for s in ds.samples] == ["0016E5_08159.png", "0001TP_006690.png"]
    with pytest.raises(DataError, match=r"lists/train.txt: split file not found \(data.params.split_dir\)"):
        build_dataset(data(camvid32, split_dir=str(lists)), "train")
    (lists / "test.txt").write_text("0001TP_999999.png\n")
    with pytest.raises(DataError, match=r"701_StillsRaw_full/0001TP_999999.png: listed in split 'test' but not found"):
        build_dataset(data(camvid32, split_dir="lists"), "test")


def test_missing_root_or_folder_names_the_layout(camvid32: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CamVid root not found \(expected 701_StillsRaw_full/"):
        build_dataset(data(tmp_path / "nope"), "train")
    with pytest.raises(DataError, match=r"data split 'trainval': CamVid has train, val, test"):
        build_dataset(data(camvid32), "trainval")
    for path in sorted((camvid32 / "LabeledApproved_full").iterdir()):
        path.unlink()
    (camvid32 / "LabeledApproved_full").rmdir()
    with pytest.raises(DataError, match=r"no 'LabeledApproved_full/' folder; expected the original CamVid release"):
        build_dataset(data(camvid32), "train")


def test_image_without_label_and_foreign_frame_are_named(camvid32: Path) -> None:
    (camvid32 / "LabeledApproved_full" / "0006R0_f00930_L.png").unlink()
    with pytest.raises(DataError, match=r"0006R0_f00930.png: no mask at .*LabeledApproved_full/0006R0_f00930_L.png"):
        build_dataset(data(camvid32), "train")
    (camvid32 / "701_StillsRaw_full" / "0006R0_f00930.png").unlink()
    Image.new("RGB", (SIZE[1], SIZE[0])).save(camvid32 / "701_StillsRaw_full" / "holiday.png")
    with pytest.raises(DataError, match=r"holiday.png: not a CamVid frame name"):
        build_dataset(data(camvid32), "val")


def test_unknown_colour_and_wrong_size_are_named(camvid32: Path) -> None:
    label = camvid32 / "LabeledApproved_full" / "0016E5_07959_L.png"
    rgb = colour_label(class_pattern(5))
    rgb[2, 3] = (1, 2, 3)
    Image.fromarray(rgb, "RGB").save(label)
    ds = build_dataset(data(camvid32), "val")
    with pytest.raises(DataError, match=r"0016E5_07959_L.png: colour \(1, 2, 3\) at \(x=3, y=2\) is not one of the 32"):
        ds[0]
    Image.fromarray(colour_label(class_pattern(5))[:5], "RGB").save(label)
    with pytest.raises(DataError, match=r"0016E5_07959_L.png: mask is 16×5 but its image is 16×12"):
        ds[0]
    Image.fromarray(class_pattern(5).astype(np.uint8), "L").save(label)
    with pytest.raises(DataError, match=r"expected an RGB colour-coded label image, got mode L"):
        ds[0]


# ------------------------------------------------------------------ scripted download, offline


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder) of an HTTP server on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()


def _release_archives(src: Path, served: Path) -> dict[str, str]:
    """Zip a fixture as the site serves it: images under their folder, labels flat; returns md5s."""
    with zipfile.ZipFile(served / "701_StillsRaw_full.zip", "w") as zf:
        for path in sorted((src / "701_StillsRaw_full").iterdir()):
            zf.write(path, f"701_StillsRaw_full/{path.name}")
    with zipfile.ZipFile(served / "LabeledApproved_full.zip", "w") as zf:
        for path in sorted((src / "LabeledApproved_full").iterdir()):
            zf.write(path, path.name)
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}


def test_download_unpacks_the_release_into_a_usable_root(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, served = server
    md5 = _release_archives(build_camvid32(tmp_path / "src"), served)
    names = [r.url.rsplit("/", 1)[1] for r in CamVid32.RESOURCES]
    assert names == ["701_StillsRaw_full.zip", "LabeledApproved_full.zip"]
    assert all(r.md5 is None for r in CamVid32.RESOURCES)  # no published checksums
    local = tuple(
        dataclasses.replace(r, url=f"{base}/{r.url.rsplit('/', 1)[1]}", md5=md5[r.url.rsplit("/", 1)[1]])
        for r in CamVid32.RESOURCES
    )
    monkeypatch.setattr(CamVid32, "RESOURCES", local)
    root = CamVid32.download(tmp_path / "data")
    ds = build_dataset(data(root), "val")
    assert [s.image.stem for s in ds.samples] == ["0016E5_07959", "0016E5_08159"]
    assert np.array_equal(ds.load_mask(0), expected_ids(class_pattern(list(FRAMES).index("0016E5_07959"))))


def test_download_without_checksum_still_unpacks(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, served = server
    _release_archives(build_camvid32(tmp_path / "src"), served)
    local = tuple(dataclasses.replace(r, url=f"{base}/{r.url.rsplit('/', 1)[1]}") for r in CamVid32.RESOURCES)
    monkeypatch.setattr(CamVid32, "RESOURCES", local)
    root = CamVid32.download(tmp_path / "data")
    assert len(build_dataset(data(root), "train")) == sum(s == "train" for s in FRAMES.values())
