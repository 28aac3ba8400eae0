"""DUC-HDC: ResNet with hybrid dilated convolution and a dense upsampling convolution head.

Wang, Chen, Yuan, Liu, Huang, Hou and Cottrell, "Understanding Convolution for
Semantic Segmentation", WACV 2018 (arXiv:1702.08502).

Two ideas, both about convolution:

- **HDC** (hybrid dilated convolution, §3.2). A dilated ResNet at output stride 8
  that dilates every block of layer3 by 2 and of layer4 by 4 only ever samples
  a sparse grid of the input ("gridding"). HDC gives consecutive blocks
  different rates without a common factor, so together they cover every pixel:
  layer3 (res4b) cycles through 1, 2, 5, 9 and layer4 (res5) uses 5, 9, 17.
  The exact per-block rates are those of the authors' released model
  (TuSimple/TuSimple-DUC ``tusimple_duc/networks/resnet.py``): the first block of
  layer3 keeps rate 2, then block ``i`` uses ``(1, 2, 5, 9)[i % 4]``.
- **DUC** (dense upsampling convolution, §3.1). Instead of bilinearly upsampling
  a C-channel score map by 8, a convolution predicts C·8² channels at stride 8
  and a depth-to-space reshape (pixel shuffle) turns each cell's 64 sub-pixel
  scores into an 8×8 block of the full-resolution map, so the upsampling is
  learned and sees the 2048-channel features. As in the released model, the
  C·8² channels are the sum of four parallel 3×3 convolutions with dilation
  6, 12, 18, 24 (an ASPP, ``aspp_rates``; give one rate for a single conv).

The trunk is torchvision's ResNet (7×7 stem) so ImageNet weights load; the
released model uses the deep 3×3 stem (see doc/duc.md). Sizes that are not a
multiple of 8 give an upsampled map of 8·⌈H/8⌉ × 8·⌈W/8⌉, cropped to H × W.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import Pretrained, ResNetFeatures, set_block_dilation
from semseg.registry import MODELS

UPSCALE = 8  # the trunk's output stride = DUC's upscaling factor d (§3.1)
HDC_CYCLE = (1, 2, 5, 9)  # res4b rates, grouped in fours (§3.2, released model)
HDC_LAYER4 = (5, 9, 17)  # res5a–c rates (released model)
ASPP_RATES = (6, 12, 18, 24)  # released model: aspp_num 4, aspp_stride 6


def hdc_rates(num_blocks: int) -> list[int]:
    """Per-block rates of layer3: 2 for the first (projection) block, then the 1-2-5-9 cycle.

    For ResNet-101 (23 blocks) this is 2, 2, 5, 9, 1, 2, 5, 9, …, 1, 2, 5, as released.
    """
    return [2] + [HDC_CYCLE[i % len(HDC_CYCLE)] for i in range(1, num_blocks)]


class DenseUpsamplingConv(nn.Module):
    """Sum of dilated 3×3 convs to ``num_classes·r²`` channels, then depth-to-space by ``r``."""

    def __init__(self, in_channels: int, num_classes: int, upscale: int = UPSCALE,
                 rates: Sequence[int] = ASPP_RATES) -> None:
        super().__init__()
        out_channels = num_classes * upscale**2
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=r, dilation=r) for r in rates
        )
        for conv in self.branches:  # small init: four summed branches of 2048·9 inputs each
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.shuffle = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.branches[0](x)
        for branch in self.branches[1:]:
            scores = scores + branch(x)
        return self.shuffle(scores)


class DUCHDC(nn.Module):
    """ResNet-HDC trunk (stride 8) → DUC head → crop to the input size."""

    def __init__(self, depth: int, num_classes: int, aspp_rates: Sequence[int] = ASPP_RATES,
                 pretrained_backbone: Pretrained = False) -> None:
        super().__init__()
        rates = list(aspp_rates)
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise ConfigError(f"model.params.aspp_rates: need a list of positive integers, got {aspp_rates!r}")
        self.backbone = ResNetFeatures(depth, output_stride=UPSCALE, pretrained_backbone=pretrained_backbone)
        set_block_dilation(self.backbone.layer3, hdc_rates(len(self.backbone.layer3)))
        set_block_dilation(self.backbone.layer4, HDC_LAYER4)
        self.duc = DenseUpsamplingConv(self.backbone.channels["layer4"], num_classes, UPSCALE, rates)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        out = self.duc(feats["layer4"])  # N × C × 8⌈H/8⌉ × 8⌈W/8⌉
        return {"out": out[..., : x.shape[-2], : x.shape[-1]]}


# The paper gives no parameter count; ours is derived from the layer sizes (checked in
# tests/test_models_duc.py). Trunk (torchvision ResNet, no fc): 42,500,160 (R-101) /
# 23,508,032; DUC head 4·(2048·9 + 1)·64·C. C = 19 (Cityscapes, the paper's main
# benchmark, §4.1): head 89,658,112, i.e. 132.16M and 113.17M in all.
_SOURCE = "Wang et al. 2018, arXiv:1702.08502, §3 + released model (count derived from the layer sizes)"
_CITYSCAPES = {"num_classes": 19}


def _count(trunk: int, num_classes: int) -> float:
    return float(trunk + len(ASPP_RATES) * (2048 * 9 + 1) * UPSCALE**2 * num_classes)


@MODELS.register("duc_hdc_resnet101", paper_params=_count(42_500_160, 19), paper_kwargs=_CITYSCAPES,
                 output_stride=8, source=_SOURCE)
def duc_hdc_resnet101(*, num_classes: int, pretrained_backbone: Pretrained = False,
                      aspp_rates: Sequence[int] = ASPP_RATES) -> DUCHDC:
    """ResNet-101-DUC-HDC, the paper's best Cityscapes model."""
    return DUCHDC(101, num_classes, aspp_rates, pretrained_backbone)


@MODELS.register("duc_hdc_resnet50", paper_params=_count(23_508_032, 19), paper_kwargs=_CITYSCAPES,
                 output_stride=8, source=_SOURCE)
def duc_hdc_resnet50(*, num_classes: int, pretrained_backbone: Pretrained = False,
                     aspp_rates: Sequence[int] = ASPP_RATES) -> DUCHDC:
    """ResNet-50-DUC-HDC (6 layer3 blocks: rates 2, 2, 5, 9, 1, 2), a lighter variant."""
    return DUCHDC(50, num_classes, aspp_rates, pretrained_backbone)
