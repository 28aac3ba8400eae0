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
  a C-channel score map by 8, a convolution predicts C·r² channels at stride 8
  and a depth-to-space reshape (pixel shuffle) turns each cell's r² sub-pixel
  scores into an r×r block of a finer map, so the upsampling is learned and
  sees the 2048-channel features. As released, the C·r² channels are the sum of
  four parallel 3×3 convolutions with dilation 6, 12, 18, 24 (an ASPP,
  ``aspp_rates``; give one rate for a single conv).

The released configuration (``configs/*/*.cfg``: ``ds_rate 8``, ``cell_width 2``)
does not go all the way to full resolution: r = 8 / 2 = 4, so the head predicts
C·16 channels (``cell_cap`` = (ds_rate / cell_width)² in ``train/solver.py``), the
shuffle gives the 1/2-resolution map, and the predictor (``tusimple_duc/test/
predictor.py``) resizes it ×2 with ``cv.resize(INTER_LINEAR)``, i.e. bilinear with
half-pixel centres (``align_corners=False``). ``cell_width=1`` gives the paper's
full-resolution C·64 head (4× the released head's parameters).

The trunk is torchvision's ResNet (7×7 stem) so ImageNet weights load; the
released model uses the deep 3×3 stem (see doc/duc.md). Sizes that are not a
multiple of 8 give a map of 8·⌈H/8⌉ × 8·⌈W/8⌉ after the ×2, cropped to H × W.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import Pretrained, ResNetFeatures, set_block_dilation
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 2.06
UPSCALE = 8  # the trunk's output stride (ds_rate in the release)
CELL_WIDTH = 2  # released configs: cell_width 2, DUC predicts the 1/2-resolution map
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
    """ResNet-HDC trunk (stride 8) → DUC head to 1/``cell_width`` → bilinear ×``cell_width`` → crop."""

    def __init__(self, depth: int, num_classes: int, aspp_rates: Sequence[int] = ASPP_RATES,
                 cell_width: int = CELL_WIDTH, align_corners: bool = False,
                 pretrained_backbone: Pretrained = False) -> None:
        super().__init__()
        rates = list(aspp_rates)
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise ConfigError(f"model.params.aspp_rates: need a list of positive integers, got {aspp_rates!r}")
        if isinstance(cell_width, bool) or cell_width not in (1, 2, 4, 8):
            raise ConfigError(f"model.params.cell_width: must be 1, 2, 4 or 8 (divisors of 8), got {cell_width!r}")
        self.cell_width, self.align_corners = cell_width, align_corners
        self.backbone = ResNetFeatures(depth, output_stride=UPSCALE, pretrained_backbone=pretrained_backbone)
        set_block_dilation(self.backbone.layer3, hdc_rates(len(self.backbone.layer3)))
        set_block_dilation(self.backbone.layer4, HDC_LAYER4)
        self.duc = DenseUpsamplingConv(self.backbone.channels["layer4"], num_classes, UPSCALE // cell_width, rates)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        out = self.duc(feats["layer4"])  # N × C × (8/cw)⌈H/8⌉ × (8/cw)⌈W/8⌉, i.e. at 1/cell_width
        if self.cell_width > 1:  # the released predictor's ×2 cv.resize (INTER_LINEAR)
            out = F.interpolate(out, scale_factor=self.cell_width, mode="bilinear", align_corners=self.align_corners)
        return {"out": out[..., : x.shape[-2], : x.shape[-1]]}


# The paper gives no parameter count. The registered figure is the *released* model's, counted
# from its MXNet symbol (tusimple_duc/networks/resnet.py + network_duc_hdc.py; re-derived in
# tests/test_models_duc.py from that layer list, not from our layers): a deep-stem ResNet
# (3×3 convs 3→64 /2, 64→64, 64→128, layer1 taking 128 channels; convs without bias, BN γ and β)
# of 42,623,936 (R-101) / 23,631,808 parameters, and a head of aspp_num 4 biased 3×3
# convs 2048 → cell_cap·C, cell_cap = (8 / cell_width 2)² = 16: 4·(2048·9 + 1)·16·C. C = 19
# (Cityscapes, the release's and the paper's main benchmark, §4.1): 22,414,528, so 65,038,464
# and 46,046,336 (R-50, the release's design at 50 layers). Ours differs only by the
# torchvision 7×7 stem, 123,776 fewer (0.19 % / 0.27 %, inside the 1 % tolerance).
_SOURCE = ("Wang et al. 2018, arXiv:1702.08502, §3; count of the released MXNet model "
           "(TuSimple/TuSimple-DUC, cell_width 2), not of our layers")
_CITYSCAPES = {"num_classes": 19}


@MODELS.register("duc_hdc_resnet101", paper_params=65_038_464.0, paper_kwargs=_CITYSCAPES,
                 output_stride=8, source=_SOURCE)
def duc_hdc_resnet101(*, num_classes: int, pretrained_backbone: Pretrained = False,
                      aspp_rates: Sequence[int] = ASPP_RATES, cell_width: int = CELL_WIDTH,
                      align_corners: bool = False) -> DUCHDC:
    """ResNet-101-DUC-HDC, the paper's best Cityscapes model, as released (cell_width 2)."""
    return DUCHDC(101, num_classes, aspp_rates, cell_width, align_corners, pretrained_backbone)


@MODELS.register("duc_hdc_resnet50", paper_params=46_046_336.0, paper_kwargs=_CITYSCAPES,
                 output_stride=8, source=_SOURCE)
def duc_hdc_resnet50(*, num_classes: int, pretrained_backbone: Pretrained = False,
                     aspp_rates: Sequence[int] = ASPP_RATES, cell_width: int = CELL_WIDTH,
                     align_corners: bool = False) -> DUCHDC:
    """ResNet-50-DUC-HDC (6 layer3 blocks: rates 2, 2, 5, 9, 1, 2), a lighter variant."""
    return DUCHDC(50, num_classes, aspp_rates, cell_width, align_corners, pretrained_backbone)
