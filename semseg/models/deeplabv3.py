"""DeepLab v3: a dilated ResNet with multi-grid and ASPP with image-level pooling.

Chen, Papandreou, Schroff and Adam, "Rethinking Atrous Convolution for Semantic
Image Segmentation", arXiv:1706.05587 (2017); layer details from the authors'
TensorFlow code (tensorflow/models ``research/deeplab/model.py``).

The ResNet keeps its features at 1/16 (training) or 1/8 (evaluation) of the input
by replacing the last strides with atrous (dilated) convolution (§3.1). The three
units of block4 (layer4) get the "multi-grid" rates (1, 2, 4) times the block's
rate (§3.2, best in Table 2): 2·(1, 2, 4) at output stride 16, 4·(1, 2, 4) at 8.
The atrous spatial pyramid pooling (ASPP, §3.3) runs five parallel branches on the
2048-channel features: a 1×1 conv, three 3×3 convs at rates (6, 12, 18), and
image-level pooling (global average → 1×1 conv → bilinear back). Each is
256 channels + BN + ReLU; their concatenation is projected by a 1×1 conv (256, BN,
ReLU), dropped out (keep 0.9, as the TF code) and classified by a 1×1 conv.

The paper trains at output stride 16 and evaluates at 8 (Table 4: 77.2 → 78.5 %
mIoU on VOC val), which needs the rates doubled (§3.3: "the rates are doubled
when output_stride = 8"). The weights are the same at either stride, so the model
switches in place: ``train()`` sets ``output_stride`` and ``eval()`` sets
``eval_output_stride`` (``None``: stay at ``output_stride``, 4× cheaper to evaluate
at the cost of the paper's +1.3 %). No auxiliary head: the paper trains none.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import Pretrained, ResNetFeatures, set_block_dilation
from semseg.models._blocks import ConvBNReLU, resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.71
RATES = (6, 12, 18)  # ASPP rates at output stride 16 (§3.3); doubled at 8
MULTI_GRID = (1, 2, 4)  # block4 unit rates relative to the block's rate (§3.2, Table 2)
ASPP_CHANNELS = 256  # §3.3 and model.py ``depth = 256``


def check_output_stride(output_stride: int, key: str = "output_stride") -> None:
    if output_stride not in (8, 16):
        raise ConfigError(f"model.params.{key}: DeepLab runs at output stride 8 or 16, got {output_stride}")


class DeepLabResNet(ResNetFeatures):
    """ResNet-50/101 trunk that switches between output stride 16 and 8 in place.

    Every 3×3 conv of layer3 gets rate 1 (OS 16) or 2 (OS 8); layer4's three get the
    multi-grid rates times 2 (OS 16) or 4 (OS 8), the paper's Fig. 3. torchvision puts a
    stage's stride on the first block's 3×3 conv and its projection shortcut; at OS 8
    layer3's first block keeps stride 1, at OS 16 stride 2; layer4 never strides.
    Returns ``{"low": layer1 (1/4, 256), "high": layer4 (2048)}``: the v3+ decoder needs the first.
    """

    def __init__(self, depth: int, multi_grid: Sequence[int] = MULTI_GRID,
                 pretrained_backbone: Pretrained = False) -> None:
        super().__init__(depth, output_stride=8, pretrained_backbone=pretrained_backbone)
        if depth < 50:
            raise ConfigError(f"model.params.depth: DeepLab needs a bottleneck ResNet (50/101), got {depth}")
        if len(multi_grid) != len(self.layer4) or any(int(g) < 1 for g in multi_grid):
            raise ConfigError(f"model.params.multi_grid: needs {len(self.layer4)} rates >= 1, got {list(multi_grid)}")
        self.multi_grid = tuple(int(g) for g in multi_grid)
        self.channels.update(low=self.channels["layer1"], high=self.channels["layer4"])
        self.output_stride = 0
        self.set_output_stride(16)

    def set_output_stride(self, output_stride: int) -> None:
        check_output_stride(output_stride)
        stride, rate = (2, 1) if output_stride == 16 else (1, 2)
        first = self.layer3[0]
        first.conv2.stride = first.downsample[0].stride = (stride, stride)
        for block in self.layer4:  # torchvision's dilated build already has stride 1 here; keep it so
            block.conv2.stride = (1, 1)
        self.layer4[0].downsample[0].stride = (1, 1)
        set_block_dilation(self.layer3, [rate] * len(self.layer3))
        set_block_dilation(self.layer4, [2 * rate * g for g in self.multi_grid])
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        x = self.stem(x)
        low = self.layer1(x)
        return {"low": low, "high": self.layer4(self.layer3(self.layer2(low)))}


class ASPP(nn.Module):
    """1×1 + 3×3 atrous branches + image pooling, concatenated and projected (§3.3, Fig. 5).

    ``rates`` are the rates at output stride 16; :meth:`set_output_stride` scales them by 16/OS.
    """

    def __init__(self, in_channels: int, rates: Sequence[int] = RATES, channels: int = ASPP_CHANNELS,
                 dropout: float = 0.1, align_corners: bool = True) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.params.dropout: must be in [0, 1), got {dropout}")
        if not rates or any(int(r) < 1 for r in rates):
            raise ConfigError(f"model.params.rates: needs rates >= 1, got {list(rates)}")
        self.base_rates = tuple(int(r) for r in rates)
        self.align_corners = align_corners
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, channels, 1)]
            + [ConvBNReLU(in_channels, channels, 3, dilation=r) for r in self.base_rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1))
        self.project = ConvBNReLU(channels * (len(self.base_rates) + 2), channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.out_channels = channels

    @property
    def rates(self) -> tuple[int, ...]:
        return tuple(branch[0].dilation[0] for branch in self.branches[1:])

    def set_output_stride(self, output_stride: int) -> None:
        check_output_stride(output_stride)
        for branch, rate in zip(self.branches[1:], self.base_rates):
            conv = branch[0]
            conv.dilation = conv.padding = (rate * 16 // output_stride,) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = resize_to(self.pool(x), x.shape[-2:], self.align_corners)
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1)))


def init_head(modules: Sequence[nn.Module], classifier: nn.Conv2d) -> None:
    """Kaiming (fan-out) for the head convs; N(0, 0.01) logits as the TF code's ``_get_branch_logits``."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)


class SwitchableStride(nn.Module):
    """``train()`` runs at ``output_stride``, ``eval()`` at ``eval_output_stride`` (DeepLab v3 §4.1)."""

    backbone: nn.Module
    aspp: ASPP

    def setup_strides(self, output_stride: int, eval_output_stride: Optional[int]) -> None:
        check_output_stride(output_stride)
        if eval_output_stride is not None:
            check_output_stride(eval_output_stride, "eval_output_stride")
        self.output_stride, self.eval_output_stride = output_stride, eval_output_stride
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        self.backbone.set_output_stride(output_stride)
        self.aspp.set_output_stride(output_stride)

    @property
    def current_output_stride(self) -> int:
        return self.backbone.output_stride

    def train(self, mode: bool = True) -> "SwitchableStride":
        super().train(mode)
        evaluating = not mode and self.eval_output_stride is not None
        self.set_output_stride(self.eval_output_stride if evaluating else self.output_stride)
        return self


class DeepLabV3(SwitchableStride):
    """Dilated ResNet (multi-grid) → ASPP → 1×1 classifier → bilinear to the input size."""

    def __init__(self, depth: int, num_classes: int, output_stride: int = 16, eval_output_stride: Optional[int] = 8,
                 multi_grid: Sequence[int] = MULTI_GRID, rates: Sequence[int] = RATES, dropout: float = 0.1,
                 pretrained_backbone: Pretrained = False, align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.backbone = DeepLabResNet(depth, multi_grid, pretrained_backbone)
        self.aspp = ASPP(self.backbone.channels["high"], rates, ASPP_CHANNELS, dropout, align_corners)
        self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)
        init_head([self.aspp], self.classifier)
        self.setup_strides(output_stride, eval_output_stride)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.classifier(self.aspp(self.backbone(x)["high"]))
        return {"out": resize_to(logits, x.shape[-2:], self.align_corners)}


# Parameter counts: the paper gives none, so they are derived from the layer sizes (§3.2–3.3) and
# re-derived in tests/test_models_deeplabv3.py, which also checks them against torchvision's
# deeplabv3_resnet* minus what it adds (a 3×3 conv in the head and an FCN aux head). Trunk
# (torchvision ResNet, no fc): 23,508,032 (R-50) / 42,500,160. ASPP on 2048 channels:
# 1×1 524,800 + three 3×3 14,157,312 + image pooling 524,800 + projection 328,192 = 15,535,104;
# classifier 257 per class. C = 21 (PASCAL VOC 2012, the paper's benchmark).
_SOURCE = "Chen et al. 2017, arXiv:1706.05587, §3.2–3.3 (count derived from the layer sizes; paper gives none)"
_VOC = {"num_classes": 21}
ASPP_PARAMS = 15_535_104


@MODELS.register("deeplabv3_resnet50", paper_params=23_508_032.0 + ASPP_PARAMS + 257 * 21, paper_kwargs=_VOC,
                 output_stride=16, eval_output_stride=8, source=_SOURCE)
def deeplabv3_resnet50(*, num_classes: int, pretrained_backbone: Pretrained = False, output_stride: int = 16,
                       eval_output_stride: Optional[int] = 8, multi_grid: Sequence[int] = MULTI_GRID,
                       rates: Sequence[int] = RATES, dropout: float = 0.1,
                       align_corners: bool = True) -> DeepLabV3:
    """DeepLab v3 on torchvision's ResNet-50 (ImageNet weights available)."""
    return DeepLabV3(50, num_classes, output_stride, eval_output_stride, multi_grid, rates, dropout,
                     pretrained_backbone, align_corners)


@MODELS.register("deeplabv3_resnet101", paper_params=42_500_160.0 + ASPP_PARAMS + 257 * 21, paper_kwargs=_VOC,
                 output_stride=16, eval_output_stride=8, source=_SOURCE)
def deeplabv3_resnet101(*, num_classes: int, pretrained_backbone: Pretrained = False, output_stride: int = 16,
                        eval_output_stride: Optional[int] = 8, multi_grid: Sequence[int] = MULTI_GRID,
                        rates: Sequence[int] = RATES, dropout: float = 0.1,
                        align_corners: bool = True) -> DeepLabV3:
    """DeepLab v3 on torchvision's ResNet-101, the paper's network."""
    return DeepLabV3(101, num_classes, output_stride, eval_output_stride, multi_grid, rates, dropout,
                     pretrained_backbone, align_corners)
