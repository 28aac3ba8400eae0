"""Whole-image, sliding-window and multi-scale + flip inference (semseg/inference.py) on tiny CPU models."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import semseg.models  # noqa: F401 - registers the models
from semseg.augmentations import eval_transforms
from semseg.config import AugmentConfig, DataConfig, InferConfig, apply_overrides, config_from_dict
from semseg.errors import ConfigError
from semseg.inference import (
    add_infer_args,
    check_infer,
    describe,
    infer_overrides,
    predict_image,
    predict_scores,
    predict_slide,
    predict_whole,
    window_count,
    window_starts,
    windows,
)
from semseg.loaders import build_dataset
from semseg.registry import MODELS

C = 4  # classes


class Conv(nn.Module):
    """One convolution, returning the ``{"out": …}`` contract of the real models."""

    def __init__(self, kernel: int, symmetric: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, kernel, padding=kernel // 2)
        if symmetric:  # a kernel equal to its mirror image makes the model flip-equivariant
            with torch.no_grad():
                self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x) * 3}  # × 3: confident enough that windows and flips visibly matter


def images(h: int = 37, w: int = 53, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, h, w)


# ----------------------------------------------------------------------------- windows


def test_window_starts_step_by_stride_and_end_on_the_border() -> None:
    assert window_starts(10, 4, 3) == [0, 3, 6]  # 6 + 4 = 10: already on the border
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # the last one moved back from 9 to end at 11
    assert window_starts(4, 4, 3) == [0]
    assert window_starts(3, 4, 3) == [0]  # shorter than the tile: one window, clipped
    assert window_starts(12, 4, 4) == [0, 4, 8]  # no overlap when stride = tile


def test_window_count_matches_a_hand_example() -> None:
    count = window_count(2, 10, (4, 4), (3, 3))  # rows: one clipped window; columns: windows at 0, 3, 6
    expected = torch.tensor([1, 1, 1, 2, 1, 1, 2, 1, 1, 1], dtype=torch.float32)
    assert torch.equal(count, expected.expand(2, 10))
    count = window_count(11, 11, (4, 4), (3, 3))  # windows at 0, 3, 6, 7 both ways
    per_axis = torch.tensor([1, 1, 1, 2, 1, 1, 2, 2, 2, 2, 1], dtype=torch.float32)  # [0,4) [3,7) [6,10) [7,11)
    assert torch.equal(count, per_axis[:, None] * per_axis[None, :])


@pytest.mark.parametrize("size", [(1, 1), (5, 9), (37, 53), (64, 64), (65, 100)])
@pytest.mark.parametrize("tile,stride", [((16, 16), (10, 10)), ((8, 32), (8, 21)), ((64, 64), (1, 1))])
def test_windows_cover_every_pixel_and_stay_inside(size: tuple[int, int], tile: tuple[int, int], stride: tuple[int, int]) -> None:
    h, w = size
    assert window_count(h, w, tile, stride).min() >= 1
    for rows, cols in windows(h, w, tile, stride):
        assert 0 <= rows.start < rows.stop <= h and 0 <= cols.start < cols.stop <= w
        assert (rows.stop - rows.start, cols.stop - cols.start) == (min(tile[0], h), min(tile[1], w))


# ----------------------------------------------------------------------------- sliding window


@pytest.mark.parametrize("tile", [(37, 53), (64, 64), (512, 512)])
def test_slide_with_a_covering_tile_equals_whole(tile: tuple[int, int]) -> None:
    model, x = Conv(3).eval(), images()
    whole = predict_scores(model, x)
    slide = predict_scores(model, x, InferConfig(mode="slide", tile=tile))
    torch.testing.assert_close(slide, whole, atol=1e-6, rtol=0)


def test_slide_of_a_registered_model_with_a_covering_tile_equals_whole() -> None:
    model, x = MODELS.build("enet", num_classes=3).eval(), images(32, 48, 1)
    whole = predict_scores(model, x)
    torch.testing.assert_close(predict_scores(model, x, InferConfig(mode="slide", tile=(32, 48))), whole, atol=1e-6, rtol=0)


def test_slide_of_a_pointwise_model_equals_whole_with_overlapping_tiles() -> None:
    model, x = Conv(1).eval(), images()
    cfg = InferConfig(mode="slide", tile=(16, 20), stride=(7, 9))
    assert window_count(37, 53, cfg.tile, cfg.stride).max() > 1  # tiles really overlap
    torch.testing.assert_close(predict_scores(model, x, cfg), predict_scores(model, x), atol=1e-6, rtol=0)


def test_slide_averages_the_windows_it_covers() -> None:
    model, x = Conv(3).eval(), images(11, 13)
    tile, stride = (4, 5), (3, 3)
    total = torch.zeros(2, C, 11, 13)
    for y in window_starts(11, 4, 3):
        for x0 in window_starts(13, 5, 3):
            total[..., y : y + 4, x0 : x0 + 5] += model(x[..., y : y + 4, x0 : x0 + 5])["out"].softmax(1)
    expected = total / window_count(11, 13, tile, stride)
    got = predict_slide(model, x, tile, stride)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got, predict_whole(model, x), atol=1e-3)  # a 3×3 model does see the window borders


def test_default_stride_is_two_thirds_of_the_tile() -> None:
    cfg = InferConfig(mode="slide", tile=(512, 30))
    assert describe(cfg) == "slide 512×30/341×20"
    model, x = Conv(3).eval(), images(40, 50, 1)
    explicit = predict_scores(model, x, InferConfig(mode="slide", tile=(12, 30), stride=(8, 20)))
    torch.testing.assert_close(predict_scores(model, x, InferConfig(mode="slide", tile=(12, 30))), explicit, atol=0, rtol=0)


# ----------------------------------------------------------------------------- test-time augmentation


def test_flip_of_a_flip_equivariant_model_changes_nothing() -> None:
    model, x = Conv(3, symmetric=True).eval(), images()
    torch.testing.assert_close(predict_scores(model, x, InferConfig(flip=True)), predict_scores(model, x), atol=1e-6, rtol=0)


def test_flip_averages_the_plain_and_the_mirrored_pass() -> None:
    model, x = Conv(3).eval(), images()
    plain = model(x)["out"].softmax(1)
    mirrored = model(x.flip(-1))["out"].softmax(1).flip(-1)
    got = predict_scores(model, x, InferConfig(flip=True))
    assert not torch.allclose(got, plain, atol=1e-3)
    torch.testing.assert_close(got, (plain + mirrored) / 2, atol=1e-6, rtol=0)


def test_scale_one_is_plain_inference() -> None:
    model, x = Conv(3).eval(), images()
    assert torch.equal(predict_scores(model, x, InferConfig(scales=(1.0,))), predict_scores(model, x))
    slide = InferConfig(mode="slide", tile=(16, 16))
    assert torch.equal(predict_scores(model, x, slide), predict_slide(model, x, (16, 16), (10, 10)))


def test_multi_scale_averages_passes_resized_back() -> None:
    model, x = Conv(3).eval(), images(36, 52)
    half = F.interpolate(x, size=(18, 26), mode="bilinear", align_corners=False)
    up = F.interpolate(model(half)["out"].softmax(1), size=(36, 52), mode="bilinear", align_corners=False)
    expected = (up + model(x)["out"].softmax(1)) / 2
    torch.testing.assert_close(predict_scores(model, x, InferConfig(scales=(0.5, 1.0))), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "cfg",
    [
        InferConfig(),
        InferConfig(mode="slide", tile=(16, 24)),
        InferConfig(scales=(0.75, 1.0, 1.5), flip=True),
        InferConfig(mode="slide", tile=(20, 20), stride=(7, 11), scales=(0.6, 1.25), flip=True),
    ],
    ids=describe,
)
def test_scores_are_probabilities_at_the_input_size(cfg: InferConfig) -> None:
    scores = predict_scores(Conv(3).eval(), images(), cfg)
    assert scores.shape == (2, C, 37, 53) and scores.dtype == torch.float32
    assert scores.min() >= 0
    torch.testing.assert_close(scores.sum(1), torch.ones(2, 37, 53), atol=1e-5, rtol=0)


class Recorder(nn.Module):
    """Keeps the inputs it is given; predicts class 0 everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.inputs.append(x.clone())
        return {"out": F.pad(torch.ones_like(x[:, :1]), (0, 0, 0, 0, 0, C - 1))}


@pytest.mark.parametrize("eval_size", [None, (27, 35), (64, 80)], ids=["native", "down", "up"])
def test_validate_and_test_feed_the_network_the_same_input(eval_size: tuple[int, int] | None) -> None:
    """validate.py's input (the dataset through eval_transforms) and test.py's (predict_image on the split's image) are one."""
    aug = AugmentConfig(eval_size=eval_size)
    data = DataConfig(name="synthetic", params={"size": [48, 64], "num_images": {"val": 3}})
    scored, plain = build_dataset(data, "val", eval_transforms(aug)), build_dataset(data, "val")
    for i in range(len(plain)):
        model = Recorder()
        ids, _ = predict_image(model, plain.load_image(i), aug, torch.device("cpu"))
        (network_input,) = model.inputs
        assert torch.equal(network_input[0], scored[i][0])  # bit for bit, however the image is resized
        assert ids.shape == (48, 64)  # the prediction itself at the image's own size


def test_predict_image_takes_the_inference_settings() -> None:
    image = Image.new("RGB", (53, 37), (90, 120, 30))
    ids, confidence = predict_image(Conv(3), image, AugmentConfig(), torch.device("cpu"), InferConfig(mode="slide", tile=(16, 16), flip=True))
    assert ids.shape == confidence.shape == (37, 53) and int(ids.max()) < C


# ----------------------------------------------------------------------------- settings and flags


@pytest.mark.parametrize(
    "cfg,message",
    [
        (InferConfig(tile=(0, 8)), "infer.tile: sizes must be at least 1"),
        (InferConfig(stride=(0, 4)), "infer.stride: steps must be at least 1"),
        (InferConfig(tile=(8, 8), stride=(9, 4)), "infer.stride: [9, 4] is larger than infer.tile [8, 8]"),
        (InferConfig(scales=()), "infer.scales: give at least one scale"),
        (InferConfig(scales=(1.0, -0.5)), "infer.scales: scales must be positive"),
        (InferConfig(scales=(float("nan"),)), "infer.scales: scales must be positive"),
    ],
)
def test_bad_settings_are_one_line_config_errors(cfg: InferConfig, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_infer(cfg)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        predict_scores(Conv(1), images(), cfg)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_infer_args(parser)
    return parser.parse_args(argv)


def test_flags_become_checked_infer_overrides() -> None:
    assert infer_overrides(parse([])) == []
    args = parse(["--mode", "slide", "--tile", "32", "48", "--stride", "16", "24", "--scales", "0.5", "1", "1.5", "--flip"])
    overrides = infer_overrides(args)
    assert overrides == ["infer.mode=slide", "infer.tile=[32,48]", "infer.stride=[16,24]", "infer.scales=[0.5,1.0,1.5]", "infer.flip=true"]
    base = {"model": {"name": "enet"}, "data": {"name": "synthetic"}, "infer": {"flip": True}}
    cfg = config_from_dict(apply_overrides(base, overrides))
    assert cfg.infer == InferConfig(mode="slide", tile=(32, 48), stride=(16, 24), scales=(0.5, 1.0, 1.5), flip=True)
    assert config_from_dict(apply_overrides(base, infer_overrides(parse(["--no-flip"])))).infer.flip is False
    assert describe(cfg.infer) == "slide 32×48/16×24, scales 0.5,1,1.5, flip"
    assert describe(None) == "whole"
