"""Turning normalised images into class probabilities: whole image, sliding window, multi-scale + flip TTA.

Sliding-window inference follows mmseg's ``EncoderDecoder.slide_inference``: windows
of ``infer.tile`` every ``infer.stride`` pixels, the last window in each direction
shifted back so that it ends on the border, and each pixel's scores divided by the
number of windows that covered it. Multi-scale inputs and left-right flipping, with
the scores averaged, are the test-time augmentation of DeepLabv3 (Chen et al., 2017,
arXiv:1706.05587, "inference strategy" ablation) and PSPNet (Zhao et al., CVPR 2017).

Scores are averaged as softmax probabilities (not logits), so every pass has the
same weight whatever the scale of its logits, and the result still sums to 1 per pixel.
"""

from __future__ import annotations

import argparse
import logging
import math

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from semseg.augmentations import eval_image, image_tensor
from semseg.config import AugmentConfig, InferConfig, check_values

logger = logging.getLogger(__name__)

WHOLE = InferConfig()


# ----------------------------------------------------------------------------- settings


def check_infer(cfg: InferConfig) -> None:
    """The schema's rules for ``infer`` (semseg/config.py), for an InferConfig built in code rather than loaded."""
    check_values(cfg, "infer")


def resolve_stride(cfg: InferConfig) -> tuple[int, int]:
    """``infer.stride``, or two thirds of the tile (mmseg's 512/341 default) when unset."""
    if cfg.stride is not None:
        return cfg.stride
    return (max(1, 2 * cfg.tile[0] // 3), max(1, 2 * cfg.tile[1] // 3))


def describe(cfg: InferConfig | None) -> str:
    """Short human form for title lines, e.g. ``slide 512×512/341×341, scales 0.75,1,1.25, flip``."""
    cfg = cfg or WHOLE
    text = cfg.mode
    if cfg.mode == "slide":
        stride = resolve_stride(cfg)
        text += f" {cfg.tile[0]}×{cfg.tile[1]}/{stride[0]}×{stride[1]}"
    if tuple(cfg.scales) != (1.0,):
        text += ", scales " + ",".join(f"{s:g}" for s in cfg.scales)
    if cfg.flip:
        text += ", flip"
    return text


# ----------------------------------------------------------------------------- windows


def window_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis.

    Windows step by ``stride``; the last one is moved back to end exactly on the
    border (mmseg's ``slide_inference``) instead of hanging over it, so no padding
    is needed. An axis shorter than the tile gets a single window clipped to the
    image: the models take any size, and padding would show them content they
    never saw in training and make a covering tile differ from whole-image mode.
    """
    if size <= tile:
        return [0]
    steps = math.ceil((size - tile) / stride)
    return [min(i * stride, size - tile) for i in range(steps + 1)]


def windows(height: int, width: int, tile: tuple[int, int], stride: tuple[int, int]) -> list[tuple[slice, slice]]:
    """(rows, cols) slices of every window over an ``height``×``width`` image."""
    th, tw = min(tile[0], height), min(tile[1], width)
    return [
        (slice(y, y + th), slice(x, x + tw))
        for y in window_starts(height, tile[0], stride[0])
        for x in window_starts(width, tile[1], stride[1])
    ]


def window_count(height: int, width: int, tile: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """How many windows cover each pixel (H×W float); the divisor of the summed scores."""
    count = torch.zeros(height, width)
    for rows, cols in windows(height, width, tile, stride):
        count[rows, cols] += 1
    return count


# ----------------------------------------------------------------------------- prediction


def predict_whole(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """One forward pass; float32 softmax so mixed-precision models average safely."""
    return model(images)["out"].float().softmax(1)


def predict_slide(model: nn.Module, images: torch.Tensor, tile: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Average of the window probabilities at each pixel.

    One window at a time (for the whole batch), so memory stays that of one tile
    however large the image.
    """
    height, width = images.shape[-2:]
    total: torch.Tensor | None = None
    for rows, cols in windows(height, width, tile, stride):
        probs = predict_whole(model, images[..., rows, cols])
        if total is None:
            total = probs.new_zeros(probs.shape[:2] + (height, width))
        total[..., rows, cols] += probs
    return total / window_count(height, width, tile, stride).to(total.device)


def _predict_single(model: nn.Module, images: torch.Tensor, cfg: InferConfig) -> torch.Tensor:
    """Whole or sliding-window probabilities at the size of ``images``."""
    if cfg.mode == "slide":
        return predict_slide(model, images, cfg.tile, resolve_stride(cfg))
    return predict_whole(model, images)


def _predict_at_scale(model: nn.Module, images: torch.Tensor, cfg: InferConfig, scale: float) -> torch.Tensor:
    """Probabilities for ``images`` resized by ``scale``, brought back to the input size.

    Bilinear resizing of probabilities mixes them convexly, so they still sum to 1.
    Scale 1 skips both resizes, keeping that pass bit-identical to plain inference.
    """
    size = tuple(images.shape[-2:])
    if scale == 1.0:
        return _predict_single(model, images, cfg)
    scaled = tuple(max(1, round(s * scale)) for s in size)
    resized = F.interpolate(images, size=scaled, mode="bilinear", align_corners=False)
    probs = _predict_single(model, resized, cfg)
    return F.interpolate(probs, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_scores(model: nn.Module, images: torch.Tensor, cfg: InferConfig | None = None) -> torch.Tensor:
    """Class probabilities N×C×H×W (float32) for normalised images N×3×H×W, per ``cfg``.

    Averages over ``cfg.scales`` and, with ``cfg.flip``, over the mirrored image
    too (its scores mirrored back). ``None`` means one whole-image pass.
    """
    cfg = cfg or WHOLE
    check_infer(cfg)
    total: torch.Tensor | None = None
    passes = 0
    for scale in cfg.scales:
        for flip in (False, True) if cfg.flip else (False,):
            x = images.flip(-1) if flip else images
            probs = _predict_at_scale(model, x, cfg, scale)
            probs = probs.flip(-1) if flip else probs
            total = probs if total is None else total + probs
            passes += 1
    return total if passes == 1 else total / passes


@torch.no_grad()
def predict_image(
    model: nn.Module, image: Image.Image, cfg: AugmentConfig, device: torch.device, infer: InferConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class ids H×W, confidence H×W) at the image's own size.

    The network input is built by ``semseg.augmentations.eval_image``, as for
    validation (normalised; resized with antialiasing to ``augment.eval_size`` when
    set), and the class scores are resized back (bilinear on probabilities, so the
    labels stay sharp).
    """
    model.eval()
    x = eval_image(image_tensor(image), cfg)[None].to(device)
    probs = predict_scores(model, x, infer)
    if probs.shape[-2:] != (image.height, image.width):
        probs = F.interpolate(probs, size=(image.height, image.width), mode="bilinear", align_corners=False)
    confidence, ids = probs[0].max(0)
    return ids.cpu(), confidence.cpu()


# ----------------------------------------------------------------------------- command line


def add_infer_args(parser: argparse.ArgumentParser) -> None:
    """The ``infer.*`` flags shared by validate.py and test.py (defined once, rule 7)."""
    group = parser.add_argument_group("inference (shortcuts for --set infer.*)")
    group.add_argument("--mode", choices=["whole", "slide"], help="whole image in one pass, or sliding windows")
    group.add_argument("--tile", type=int, nargs=2, metavar=("H", "W"), help="sliding-window size")
    group.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding-window step (default: 2/3 of the tile)")
    group.add_argument("--scales", type=float, nargs="+", metavar="S", help="test-time scales, probabilities averaged")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, help="also average the horizontally flipped image")


def infer_overrides(args: argparse.Namespace) -> list[str]:
    """The inference flags as ``infer.key=value`` overrides, so the config checks and records them like ``--set``."""
    items = []
    if args.mode is not None:
        items.append(f"infer.mode={args.mode}")
    for key in ("tile", "stride", "scales"):
        value = getattr(args, key)
        if value is not None:
            items.append(f"infer.{key}=[{','.join(map(repr, value))}]")
    if args.flip is not None:
        items.append(f"infer.flip={'true' if args.flip else 'false'}")
    return items
