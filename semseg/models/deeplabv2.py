"""DeepLab v2: DeepLab-LargeFOV (VGG-16) and DeepLab-ASPP (ResNet-101, rates 6/12/18/24, summed).

Chen, Papandreou, Kokkinos, Murphy and Yuille, "DeepLab: Semantic Image Segmentation with
Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2018
(arXiv:1606.00915); LargeFOV from the v1 paper (ICLR 2015, arXiv:1412.7062, §3.1, §4.1).
Layer details from the authors' Caffe prototxts (DeepLab-LargeFOV and DeepLabv2 ResNet-101
``train.prototxt``, as read by their ports).

LargeFOV: VGG-16 with 3×3/2 max pools (pad 1, Caffe's ceil rounding) after conv1–3 and
3×3/1 pools after conv4 and conv5, so the features stay at 1/8; conv5 is atrous with rate 2
(it would have followed a stride-2 pool). The 7×7×4096 fc6 becomes a 3×3 conv with rate 12
and 1024 channels (a 3×3 average pool ``pool5a`` before it), fc7 a 1×1 conv with 1024, each
followed by ReLU and dropout 0.5; fc8 classifies. With ImageNet weights, fc6/fc7 are
decimated from VGG's fc layers (every 4th filter, every 3rd tap of the 7×7), as the paper's
§4.1 init, so they start from the classifier's weights.

ASPP (v2 §3.3, Fig. 7): on a ResNet-101 at output stride 8 (every block of layer3 at rate 2,
of layer4 at rate 4), four parallel 3×3 convs at rates 6, 12, 18 and 24 each predict the
class scores directly, and the four score maps are *summed* (Caffe ``Eltwise SUM``).

The paper's fully connected CRF post-processing and its multi-scale-input training (MSC) are
not part of the model; see doc/deeplabv2.md.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import Pretrained, ResNetFeatures, dilate_stages, load_pretrained
from semseg.models._blocks import resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 2.16  # deeplabv2_vgg16_largefov 2.16x, deeplabv2_resnet101 2.32x: the smaller one
ASPP_RATES = (6, 12, 18, 24)  # v2 §3.3, "ASPP-L" (Table 3)
FC6_RATE, FC_CHANNELS = 12, 1024  # LargeFOV (v1 Table 2): 3×3 kernel, rate 12, 1024 channels
DILATION = {"layer3": 2, "layer4": 4}  # output stride 8 (v2 §4.2, Caffe res4*/res5* dilation)
# torchvision ``vgg16().features`` indices: convs keep them, so ImageNet weights load by name.
_POOLS = {4: 2, 9: 2, 16: 2, 23: 1, 30: 1}  # index → stride of the 3×3 max pool (pad 1)
_CONV5 = (24, 26, 28)  # atrous, rate 2


def _largefov_features() -> nn.Sequential:
    widths = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
    layers: list[nn.Module] = []
    in_channels, convs = 3, iter(widths)
    while len(layers) <= max(_POOLS):
        index = len(layers)
        if index in _POOLS:
            layers.append(nn.MaxPool2d(3, _POOLS[index], padding=1, ceil_mode=True))
            continue
        out = next(convs)
        rate = 2 if index in _CONV5 else 1
        layers += [nn.Conv2d(in_channels, out, 3, padding=rate, dilation=rate), nn.ReLU(inplace=True)]
        in_channels = out
    return nn.Sequential(*layers)


def decimate_vgg_fc(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``vgg16`` keys → LargeFOV's: conv layers as is, fc6/fc7 decimated (v1 §4.1).

    fc6 (4096 × 512·7·7) keeps every 4th filter and taps 0, 3, 6 of the 7×7 (→ 1024×512×3×3);
    fc7 (4096 × 4096) keeps every 4th filter and every 4th input (→ 1024×1024×1×1).
    """
    out = {k: v for k, v in state.items() if k.startswith("features.")}
    if "classifier.0.weight" in state:
        fc6 = state["classifier.0.weight"].reshape(4096, 512, 7, 7)
        out["fc6.weight"], out["fc6.bias"] = fc6[::4, :, ::3, ::3], state["classifier.0.bias"][::4]
    if "classifier.3.weight" in state:
        fc7 = state["classifier.3.weight"][::4, ::4]
        out["fc7.weight"], out["fc7.bias"] = fc7[:, :, None, None], state["classifier.3.bias"][::4]
    return out


class LargeFOVTrunk(nn.Module):
    """VGG-16 at output stride 8 → pool5a → fc6 (3×3, rate 12, 1024) → fc7 (1×1, 1024), ReLU + dropout each.

    fc6/fc7 belong to the trunk: they start from (decimated) ImageNet weights and train at the trunk's lr
    (the Caffe solver's lr_mult 1; only fc8 has 10×, i.e. ``optim.backbone_lr_mult: 0.1``).
    """

    def __init__(self, dropout: float = 0.5, pretrained_backbone: Pretrained = False) -> None:
        super().__init__()
        self.features = _largefov_features()
        self.pool5a = nn.AvgPool2d(3, stride=1, padding=1)  # Caffe AVE: the padded window counts (9 taps)
        self.fc6 = nn.Conv2d(512, FC_CHANNELS, 3, padding=FC6_RATE, dilation=FC6_RATE)
        self.fc7 = nn.Conv2d(FC_CHANNELS, FC_CHANNELS, 1)
        self.drop6, self.drop7 = nn.Dropout(dropout), nn.Dropout(dropout)
        for m in self.modules():  # torchvision's VGG init for what ImageNet weights do not cover
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        from torchvision.models import VGG16_Weights  # lazy, like fcn.py

        load_pretrained(self, pretrained_backbone, VGG16_Weights.IMAGENET1K_V1, decimate_vgg_fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.drop6(torch.relu(self.fc6(self.pool5a(self.features(x)))))
        return self.drop7(torch.relu(self.fc7(f)))


class VGG16LargeFOV(nn.Module):
    """LargeFOV trunk → fc8 (1×1, C) → bilinear to the input size."""

    def __init__(self, num_classes: int, dropout: float = 0.5, pretrained_backbone: Pretrained = False,
                 align_corners: bool = True) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.params.dropout: must be in [0, 1), got {dropout}")
        self.align_corners = align_corners
        self.backbone = LargeFOVTrunk(dropout, pretrained_backbone)
        self.fc8 = nn.Conv2d(FC_CHANNELS, num_classes, 1)
        nn.init.normal_(self.fc8.weight, std=0.01)  # Caffe fc8: gaussian std 0.01, bias 0
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": resize_to(self.fc8(self.backbone(x)), x.shape[-2:], self.align_corners)}


class ASPPSum(nn.Module):
    """Parallel 3×3 atrous convs straight to class scores, summed (v2 Fig. 7; Caffe ``fc1_*_c0..c3``)."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = ASPP_RATES) -> None:
        super().__init__()
        if not rates or any(int(r) < 1 for r in rates):
            raise ConfigError(f"model.params.rates: needs rates >= 1, got {list(rates)}")
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=int(r), dilation=int(r))
                                      for r in rates)
        for conv in self.branches:  # Caffe gaussian std 0.01, bias 0
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(0)


class DeepLabV2ResNet(nn.Module):
    """ResNet at output stride 8 (every layer3 block rate 2, layer4 rate 4) → ASPP (summed scores)."""

    def __init__(self, depth: int, num_classes: int, rates: Sequence[int] = ASPP_RATES,
                 pretrained_backbone: Pretrained = False, align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.backbone = ResNetFeatures(depth, output_stride=8, pretrained_backbone=pretrained_backbone)
        dilate_stages(self.backbone, DILATION)
        self.aspp = ASPPSum(self.backbone.channels["layer4"], num_classes, rates)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = self.aspp(self.backbone(x)["layer4"])
        return {"out": resize_to(scores, x.shape[-2:], self.align_corners)}


_VOC = {"num_classes": 21}
# LargeFOV: 20.5M in the v1 paper's Table 2 (VOC, 21 classes); ours 20,505,429 = VGG-16 convs 14,714,688
# + fc6 4,719,616 + fc7 1,049,600 + fc8 21,525. ResNet-101 ASPP: the paper gives no count; derived:
# torchvision trunk (no fc) 42,500,160 + four 3×3 2048→C convs with bias 4·(18,432·C + C).
_SOURCE_FOV = "Chen et al. ICLR 2015, arXiv:1412.7062, Table 2 (DeepLab-LargeFOV, 20.5M); v2 arXiv:1606.00915 §4.1"
_SOURCE_ASPP = "Chen et al. 2018, arXiv:1606.00915, §3.3 (count derived from the layer sizes; paper gives none)"


@MODELS.register("deeplabv2_vgg16_largefov", paper_params=20.5e6, paper_kwargs=_VOC, output_stride=8,
                 source=_SOURCE_FOV)
def deeplabv2_vgg16_largefov(*, num_classes: int, pretrained_backbone: Pretrained = False, dropout: float = 0.5,
                             align_corners: bool = True) -> VGG16LargeFOV:
    """DeepLab-LargeFOV: VGG-16 at stride 8, fc6 as a 3×3 rate-12 conv with 1024 channels."""
    return VGG16LargeFOV(num_classes, dropout, pretrained_backbone, align_corners)


@MODELS.register("deeplabv2_resnet101", paper_params=42_500_160.0 + 4 * (18_433 * 21), paper_kwargs=_VOC,
                 output_stride=8, source=_SOURCE_ASPP)
def deeplabv2_resnet101(*, num_classes: int, pretrained_backbone: Pretrained = False,
                        rates: Sequence[int] = ASPP_RATES, align_corners: bool = True) -> DeepLabV2ResNet:
    """DeepLab v2 ASPP-L on ResNet-101 (the paper's best single model before CRF)."""
    return DeepLabV2ResNet(101, num_classes, rates, pretrained_backbone, align_corners)
