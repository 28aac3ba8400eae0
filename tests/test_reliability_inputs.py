"""Every bad input gets a one-line error naming the culprit, exit code 2 and nothing half-written.

One test per row of doc/reliability.md ("Bad input") that no older test covers; the table
names the older tests for the other rows. Data is the tiny SegNet-layout CamVid of
tests/fixtures/camvid.py, models are ENet at 24×32 px, all on CPU.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import train
import validate
from semseg.build import build_model
from semseg.checkpoint import FORMAT_VERSION, load_model_state, save_atomic
from semseg.config import DataConfig, config_from_dict
from semseg.errors import CheckpointError, DataError
from semseg.loaders import SegmentationDataset, build_dataset
from semseg.loaders._base import Sample
from tests.conftest import load_script, one_line_error
from tests.fixtures.checkpoints import write_checkpoint
from tests.fixtures.camvid import SIZE, build_camvid, mask_pattern

test_script = load_script("test")  # the repo's test.py

SYNTHETIC = {"name": "synthetic", "num_workers": 0, "val_batch_size": 2,
             "params": {"size": [24, 32], "num_images": {"train": 2, "val": 2, "test": 2}}}  # fmt: skip


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def synthetic_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "synthetic.pt", SYNTHETIC)


@pytest.fixture
def camvid(tmp_path: Path) -> Path:
    return build_camvid(tmp_path / "CamVid", {"train": 8, "val": 2, "test": 2})


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder this process cannot write to (skipped where chmod has no effect, e.g. as root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("chmod does not make folders read-only here (running as root?)")
        yield folder
    finally:
        folder.chmod(0o755)


def camvid_recipe(tmp_path: Path, root: Path, *lines: str) -> list[str]:
    """train.py arguments for ENet on the CamVid fixture, at 24×32, writing under ``tmp_path/runs``."""
    recipe = tmp_path / "camvid_tiny.yml"
    recipe.write_text("model: {name: enet}\n"
                      f"data: {{name: camvid, root: '{root}', batch_size: 2, num_workers: 0}}\n"
                      "optim: {name: adam, lr: 1.0e-3}\ntrain: {epochs: 1, device: cpu}\nlog: {visdom: false, print_every: 100}\n")  # fmt: skip
    return ["--config", str(recipe), "--set", f"log.run_dir={tmp_path / 'runs'}", *lines]


def epoch_records(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "runs" / "camvid_tiny" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "epoch"]


# ----------------------------------------------------------------------------- config


def test_unknown_model_dataset_and_loss_names_list_the_choices(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["--set", "data.params.num_images={train: 2, val: 1, test: 1}", "data.num_workers=0", "log.visdom=false",
            f"log.run_dir={tmp_path}"]  # fmt: skip
    for override, start in [("model.name=enett", "unknown model 'enett' (did you mean 'enet'?); choices: "),
                            ("data.name=camvidd", "unknown dataset 'camvidd' (did you mean 'camvid'?); choices: "),
                            ("loss.name=lovaszz", "unknown loss 'lovaszz' (did you mean 'lovasz'?); choices: ")]:  # fmt: skip
        assert train.main([*base, override]) == 2
        err = one_line_error(capsys)
        assert err.startswith(f"error: {start}"), err
        choices = err.split("choices: ")[1].split(", ")
        assert {"enet", "camvid", "cross_entropy"} & set(choices) and choices == sorted(choices)
    assert list(tmp_path.iterdir()) == []  # no run folder for a config that cannot train


# ----------------------------------------------------------------------------- data


def test_wrong_layout_names_the_expected_folder(camvid: Path) -> None:
    for folder, missing in [("trainannot", "no 'trainannot/' folder"), ("train", "no 'train/' folder")]:
        for p in (camvid / folder).iterdir():
            p.unlink()
        (camvid / folder).rmdir()
        with pytest.raises(DataError) as err:
            build_dataset(DataConfig(name="camvid", root=str(camvid)), "train")
        assert str(err.value) == (f"{camvid}: {missing}; expected the SegNet CamVid layout: "
                                  "train/ trainannot/ val/ valannot/ test/ [testannot/] holding PNGs with matching names")  # fmt: skip
    assert not build_dataset(DataConfig(name="camvid", root=str(camvid)), "test").has_masks  # testannot/ is optional


def test_empty_split_is_named(camvid: Path) -> None:
    for folder in ("val", "valannot"):
        for p in (camvid / folder).iterdir():
            p.unlink()
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(name="camvid", root=str(camvid)), "val")
    assert str(err.value) == f"{camvid}: split 'val' of CamVid holds no images"


def test_truncated_image_is_named_also_from_loader_workers(camvid: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = camvid / "train" / "0001TP_000003.png"
    bad.write_bytes(bad.read_bytes()[:200])  # a copy cut short
    ds = build_dataset(DataConfig(name="camvid", root=str(camvid)), "train")
    with pytest.raises(DataError, match=rf"^{bad}: cannot read image \("):
        ds.load_image(3)
    # in training, with the error raised inside a DataLoader worker process
    assert train.main(camvid_recipe(tmp_path, camvid, "data.num_workers=2")) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"error: {bad}: cannot read image ("), err
    run = tmp_path / "runs" / "camvid_tiny"
    assert not [p for p in files_under(run) if p.endswith((".pt", ".tmp"))]  # no checkpoint, whole or partial


class Ids(SegmentationDataset):
    """In-memory masks, to check the base class's range check whatever a loader's decode step lets through."""

    CLASSES = ("a", "b", "c")

    def __init__(self, masks: list[np.ndarray]) -> None:
        self.masks = masks
        super().__init__("mem", "train")

    def find_samples(self, root: Path, split: str) -> list[Sample]:
        return [Sample(Path(f"m{i}.png"), Path(f"m{i}.png")) for i in range(len(self.masks))]

    def read_mask(self, path: Path) -> np.ndarray:
        return self.masks[int(path.stem[1:])]


def test_label_values_outside_the_classes_are_named(camvid: Path) -> None:
    # the CamVid decode step: raw ids 0..10, void 11 and the ignore value 255 pass; 12 and 40 do not
    ok = mask_pattern(0)
    ok[0, :3] = 255
    Image.fromarray(ok, "L").save(camvid / "trainannot" / "0001TP_000000.png")
    bad = mask_pattern(1)
    bad[0, 0], bad[1, 1] = 40, 12
    Image.fromarray(bad, "L").save(camvid / "trainannot" / "0001TP_000001.png")
    ds = build_dataset(DataConfig(name="camvid", root=str(camvid)), "train")
    assert set(np.unique(ds.load_mask(0))) == set(range(11)) | {255}
    with pytest.raises(DataError) as err:
        ds.load_mask(1)
    assert str(err.value) == f"{camvid / 'trainannot' / '0001TP_000001.png'}: label values [12, 40] are outside 0..10 and not void (11) or ignore (255)"
    # the base class, for any loader: ids ≥ num_classes other than IGNORE_INDEX, and negatives
    good, high = np.array([[0, 2, 255]], np.uint8), np.array([[0, 3, 7, 255]], np.uint8)
    ds = Ids([good, high, np.array([[0, -1, 300]], np.int32)])
    assert ds.load_mask(0).tolist() == [[0, 2, 255]]
    with pytest.raises(DataError, match=r"^m1.png: label values \[3, 7\] are outside 0..2 and not the ignore value$"):
        ds.load_mask(1)
    with pytest.raises(DataError, match=r"^m2.png: label values \[-1, 300\] are outside 0..2 and not the ignore value$"):
        ds.load_mask(2)


def test_greyscale_and_rgba_images_load_as_rgb_and_train_and_predict(
    camvid: Path, tmp_path: Path, synthetic_ckpt: Path
) -> None:
    h, w = SIZE
    grey, rgba, grey16 = (camvid / "train" / f"0001TP_00000{i}.png" for i in range(3))
    Image.fromarray(np.tile(np.arange(w, dtype=np.uint8) * 8, (h, 1)), "L").save(grey)
    Image.fromarray(np.full((h, w, 4), (200, 30, 60, 128), np.uint8), "RGBA").save(rgba)
    Image.fromarray(np.full((h, w), 40000, np.uint16)).save(grey16)  # 16-bit: scaled, not clipped to white
    ds = build_dataset(DataConfig(name="camvid", root=str(camvid)), "train")
    for i in range(3):
        image, mask = ds[i]
        assert image.shape == (3, h, w) and image.dtype == torch.uint8 and mask.shape == (h, w)
    assert ds[0][0][:, 0, 1].tolist() == [8, 8, 8] and ds[1][0][:, 0, 0].tolist() == [200, 30, 60]
    assert ds[2][0][:, 0, 0].tolist() == [40000 >> 8] * 3
    assert train.main(camvid_recipe(tmp_path, camvid)) == 0  # a full epoch over them, then validation
    assert len(epoch_records(tmp_path)) == 1
    out = tmp_path / "pred"
    rgb = camvid / "train" / "0001TP_000003.png"
    assert test_script.main(["--checkpoint", str(synthetic_ckpt), "--input", str(grey), str(rgba), str(grey16), str(rgb), "--out", str(out)]) == 0
    for path in (grey, rgba, grey16, rgb):
        assert np.asarray(Image.open(out / "ids" / path.name)).shape == (h, w)
        assert Image.open(out / "overlay" / path.name).mode == "RGB"


def test_skip_mode_counts_skips_made_in_loader_workers(camvid: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = camvid / "train" / "0001TP_000005.png"
    bad.write_bytes(b"not a png")
    ds = build_dataset(DataConfig(name="camvid", root=str(camvid), on_error="skip"), "train")
    with caplog.at_level(logging.WARNING, logger="semseg.loaders._base"):
        assert len([b for b in DataLoader(ds, batch_size=4, num_workers=0)]) == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping sample 5 (data.on_error: skip): {bad}: cannot read image (cannot identify image file {str(bad)!r})"]
    assert ds.skipped == 1
    for _ in range(2):  # skips made in worker processes reach this one
        assert len([b for b in DataLoader(ds, batch_size=4, num_workers=2)]) == 2
    assert ds.skipped == 3
    # in training: the per-epoch record counts the skips so far
    argv = camvid_recipe(tmp_path, camvid, "data.on_error=skip", "data.num_workers=2", "train.epochs=2")
    assert train.main(argv) == 0
    assert [r["skipped_samples"] for r in epoch_records(tmp_path)] == [1, 2]
    # every sample unreadable: an error, not an endless search
    for p in (camvid / "train").iterdir():
        p.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{camvid}: none of the 8 samples of split 'train' could be read"):
        build_dataset(DataConfig(name="camvid", root=str(camvid), on_error="skip"), "train")[0]


# ----------------------------------------------------------------------------- checkpoints


def test_bad_checkpoint_files_exit_2_in_one_line(tmp_path: Path, synthetic_ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(synthetic_ckpt.read_bytes()[:1000])
    newer = tmp_path / "newer.pt"
    save_atomic({**torch.load(synthetic_ckpt, weights_only=False), "format_version": FORMAT_VERSION + 1}, newer)
    cases = {tmp_path / "missing.pt": "checkpoint not found",
             tmp_path: f"is a folder, not a checkpoint file (e.g. {tmp_path / 'best.pt'})",
             truncated: "cannot read checkpoint (truncated or not a checkpoint: ",
             newer: f"checkpoint format {FORMAT_VERSION + 1} is newer than this semseg supports ({FORMAT_VERSION}); upgrade semseg"}  # fmt: skip
    before = files_under(tmp_path)
    for path, message in cases.items():
        for script, extra in ((validate, []), (test_script, ["--input", str(synthetic_ckpt)])):
            assert script.main(["--checkpoint", str(path), *extra]) == 2
            assert one_line_error(capsys).startswith(f"error: {path}: {message}")
    assert files_under(tmp_path) == before


def test_checkpoint_of_another_class_count_is_named(synthetic_ckpt: Path, camvid: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.json"
    argv = ["--checkpoint", str(synthetic_ckpt), "--out", str(out), "--set", "data.name=camvid", f"data.root={camvid}", "data.params={}"]
    assert validate.main(argv) == 2
    assert one_line_error(capsys) == (f"error: {synthetic_ckpt}: trained on 6 classes (sky, building, road, tree, …) but dataset "
                                      "'camvid' has 11 (sky, building, pole, road, …); pass the dataset it was trained on")  # fmt: skip
    assert not out.exists()
    # weights of another class count (train.py --resume on another dataset): the differing shapes are named
    state = torch.load(synthetic_ckpt, weights_only=False)["model"]
    with pytest.raises(CheckpointError) as err:
        load_model_state(build_model(config_from_dict({"model": {"name": "enet"}, "data": {"name": "camvid"}}).model, 11), state, "s.pt")
    assert str(err.value).startswith("s.pt: checkpoint does not fit the model (shape mismatch: fullconv.weight (16, 6, 2, 2) vs model (16, 11, 2, 2)")


# ----------------------------------------------------------------------------- scripts


def test_test_script_on_an_empty_folder_writes_nothing(synthetic_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "pred"
    assert test_script.main(["--checkpoint", str(synthetic_ckpt), "--input", str(empty), "--out", str(out)]) == 2
    assert one_line_error(capsys) == f"error: {empty}: folder holds no images (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp)"
    listed = tmp_path / "list.txt"
    listed.write_text(f"{empty}/a.png\n")
    assert test_script.main(["--checkpoint", str(synthetic_ckpt), "--input", str(listed), "--out", str(out)]) == 2
    assert one_line_error(capsys) == f"error: {listed}: lists {empty}/a.png, which does not exist"
    assert not out.exists()  # the output folder is made only once the inputs are known good


def test_test_script_output_path_that_is_a_file(synthetic_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 24)).save(image)
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    assert test_script.main(["--checkpoint", str(synthetic_ckpt), "--input", str(image), "--out", str(taken)]) == 2
    assert one_line_error(capsys) == f"error: {taken}: output path exists and is not a folder"
    assert taken.read_text() == "keep me"


def test_unwritable_output_paths_fail_before_any_work(
    synthetic_ckpt: Path, tmp_path: Path, read_only: Path, capsys: pytest.CaptureFixture
) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 24)).save(image)
    predict = ["--checkpoint", str(synthetic_ckpt), "--input", str(image), "--out"]
    assert test_script.main([*predict, str(read_only / "pred")]) == 2
    assert one_line_error(capsys) == f"error: {read_only / 'pred'}: cannot write the output folder: {read_only} is not writable"
    out = tmp_path / "pred"
    (out / "ids").mkdir(parents=True)
    (out / "ids").chmod(0o555)
    try:
        assert test_script.main([*predict, str(out)]) == 2
        assert one_line_error(capsys) == f"error: {out / 'ids'}: cannot write the output folder: {out / 'ids'} is not writable"
    finally:
        (out / "ids").chmod(0o755)
    assert files_under(out) == ["ids"]  # no colour/overlay folders, no PNGs
    assert validate.main(["--checkpoint", str(synthetic_ckpt), "--out", str(read_only / "m.json")]) == 2
    assert one_line_error(capsys) == f"error: {read_only}: cannot write the metrics folder: {read_only} is not writable"
    assert validate.main(["--checkpoint", str(synthetic_ckpt), "--out", str(tmp_path)]) == 2
    assert one_line_error(capsys) == f"error: {tmp_path}: is a folder; --out takes the metrics file's path"
    assert files_under(read_only) == []


def test_validate_on_a_split_without_masks(camvid: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = write_checkpoint(tmp_path / "camvid.pt", {"name": "camvid", "root": str(camvid), "num_workers": 0})
    assert validate.main(["--checkpoint", str(ckpt), "--split", "test"]) == 2
    assert one_line_error(capsys) == f"error: {camvid}: split 'test' has no masks to score against"
    assert validate.main(["--checkpoint", str(ckpt), "--split", "val", "--out", str(tmp_path / "val.json")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CamVid", "camvid.pt", "val.json"]  # no camvid.test.json, no temp file
