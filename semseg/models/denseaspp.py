"""DenseASPP: a dilated DenseNet followed by densely connected atrous convolutions.

Yang, Yu, Zhang, Li and Yang, "DenseASPP for Semantic Segmentation in Street Scenes", CVPR 2018; layer
sizes, dropout and channel widths from the authors' released code (DeepMotionAIResearch/DenseASPP,
``models/DenseASPP.py`` and ``cfgs/DenseASPP121.py`` / ``cfgs/DenseASPP161.py``).

Trunk (§3.2, the release's ``features``): an ImageNet DenseNet kept at output stride 8. The average pools
of transition 2 and 3 are dropped, the 3×3 convs of dense block 3 get dilation 2 and those of block 4
dilation 4, and a fourth transition (BN, ReLU, 1×1 conv halving the channels, no pool) follows block 4
before the final BN: 1024 → 512 channels for DenseNet-121, 2208 → 1104 for DenseNet-161.

Head (§3.1, Fig. 2): five atrous layers with rates 3, 6, 12, 18, 24 (receptive field 128 at stride 8),
densely connected: each one sees the trunk's features concatenated with the outputs of every earlier
layer. A layer is (BN,) ReLU, a 1×1 conv to ``d_feature0`` channels, BN, ReLU, a 3×3 atrous conv to
``d_feature1`` channels and 2-D dropout 0.1 (the first layer skips the leading BN: its input is the trunk's
final BN). ``d_feature0``/``d_feature1`` are 128/64 for DenseNet-121 and 512/128 for DenseNet-161. The final
concatenation (trunk + 5·d_feature1) goes through 2-D dropout 0.1 and a 1×1 classifier; the logits are
upsampled ×8 bilinearly (PyTorch 0.3.1's ``nn.Upsample``, i.e. ``align_corners=True``) to the input.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import Pretrained, load_pretrained
from semseg.models._blocks import resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.93
RATES = (3, 6, 12, 18, 24)  # §3.1: the five atrous layers
DILATION = {"denseblock3": 2, "denseblock4": 4}  # output stride 8 (release: dilation_rate 2/feature_size, 4/...)
HEAD = {121: (128, 64), 161: (512, 128)}  # (d_feature0, d_feature1), cfgs/DenseASPP121.py, DenseASPP161.py
DROPOUT = 0.1  # dropout0 (each atrous layer) and dropout1 (before the classifier) in both cfgs

# torchvision's ImageNet files keep the pre-0.4 key names ("denselayer1.norm.1.weight"); its
# densenet builders rename them on load, and so do we (to "denselayer1.norm1.weight").
_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _trunk_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision DenseNet state dict (legacy or current names) → keys of its ``features`` module.

    Files written before PyTorch 0.4 have no BN ``num_batches_tracked``; it only counts updates (unused at
    the default momentum), so a missing one starts at 0.
    """
    out = {}
    for key, value in state.items():
        match = _LEGACY_KEY.match(key)
        key = match.group(1) + match.group(2) if match else key
        if key.startswith("features."):
            out[key[len("features."):]] = value
    for key in [k for k in out if k.endswith(".running_mean")]:
        out.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0))
    return out


class DilatedDenseNet(nn.Module):
    """torchvision DenseNet-121/161 ``features`` at output stride 8, plus the release's transition 4 and BN."""

    def __init__(self, depth: int, pretrained_backbone: Pretrained = False) -> None:
        super().__init__()
        from torchvision.models import densenet as tv  # lazy, like _backbones

        table = {121: (tv.densenet121, tv.DenseNet121_Weights.IMAGENET1K_V1),
                 161: (tv.densenet161, tv.DenseNet161_Weights.IMAGENET1K_V1)}
        if depth not in table:
            raise ConfigError(f"model.params.depth: DenseASPP is built on DenseNet-121 or -161, got {depth}")
        build, weights = table[depth]
        features = build(weights=None).features
        load_pretrained(features, pretrained_backbone, weights, _trunk_keys)
        for name in ("transition2", "transition3"):  # keep 1/8: no pooling after block 2 or 3
            getattr(features, name).pool = nn.Identity()
        for name, rate in DILATION.items():
            for layer in getattr(features, name).children():
                layer.conv2.dilation, layer.conv2.padding = (rate, rate), (rate, rate)
        channels = features.norm5.num_features
        del features.norm5
        features.add_module("transition4", nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels // 2, 1, bias=False)))
        features.add_module("norm5", nn.BatchNorm2d(channels // 2))
        self.features = features
        self.out_channels = channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class DenseASPPLayer(nn.Sequential):
    """(BN, ReLU,) 1×1 conv → ``mid``, BN, ReLU, 3×3 atrous conv → ``out``, Dropout2d (both convs with bias).

    The first layer has neither BN nor ReLU here: its input is already ReLU(norm5(·)) (see the head).
    """

    def __init__(self, in_channels: int, mid: int, out: int, rate: int, dropout: float, bn_start: bool) -> None:
        layers: list[nn.Module] = [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)] if bn_start else []
        layers += [nn.Conv2d(in_channels, mid, 1), nn.BatchNorm2d(mid),
                   nn.ReLU(inplace=True), nn.Conv2d(mid, out, 3, padding=rate, dilation=rate), nn.Dropout2d(dropout)]
        super().__init__(*layers)


class DenseASPPHead(nn.Module):
    """Atrous layers at ``rates``, each fed the input concatenated with every earlier layer's output."""

    def __init__(self, in_channels: int, mid: int, out: int, rates: Sequence[int] = RATES,
                 dropout: float = DROPOUT) -> None:
        super().__init__()
        if not rates or any(int(r) < 1 for r in rates):
            raise ConfigError(f"model.params.rates: needs rates >= 1, got {list(rates)}")
        self.layers = nn.ModuleList(
            DenseASPPLayer(in_channels + i * out, mid, out, int(r), dropout, bn_start=i > 0) for i, r in enumerate(rates)
        )
        self.out_channels = in_channels + len(rates) * out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The release's first layer starts with an in-place ReLU on the trunk's output, so the features it
        # then concatenates are ReLU(norm5(·)) too; one explicit ReLU gives the same numbers.
        x = torch.relu(x)
        for layer in self.layers:  # the release concatenates the new output in front
            x = torch.cat([layer(x), x], dim=1)
        return x


class DenseASPP(nn.Module):
    """Dilated DenseNet (OS 8) → DenseASPP → Dropout2d → 1×1 classifier → bilinear to the input."""

    def __init__(self, depth: int, num_classes: int, rates: Sequence[int] = RATES, dropout: float = DROPOUT,
                 pretrained_backbone: Pretrained = False, align_corners: bool = True) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.params.dropout: must be in [0, 1), got {dropout}")
        self.align_corners = align_corners
        self.backbone = DilatedDenseNet(depth, pretrained_backbone)
        mid, out = HEAD[depth]
        self.aspp = DenseASPPHead(self.backbone.out_channels, mid, out, rates, dropout)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(self.aspp.out_channels, num_classes, 1)
        for m in [*self.aspp.modules(), self.classifier]:  # the release: kaiming_uniform for every conv
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
        for m in self.backbone.features.transition4.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.classifier(self.dropout(self.aspp(self.backbone(x))))
        return {"out": resize_to(logits, x.shape[-2:], self.align_corners)}


# Parameter counts: the paper gives none per network, so they are derived from the release's cfgs and
# re-derived in tests/test_models_denseaspp.py. Trunk: torchvision DenseNet features 6,953,856 (121) /
# 26,472,000 (161), less the replaced norm5, plus transition 4 and the new norm5. Head: five atrous
# layers (1×1 and 3×3 convs with bias, BNs) and a classifier of (trunk + 5·d_feature1 + 1) per class.
# C = 19 (Cityscapes, the paper's only benchmark).
_SOURCE = ("Yang et al. 2018 (CVPR), §3; count derived from the released code "
           "(DeepMotionAIResearch/DenseASPP models/DenseASPP.py, cfgs/DenseASPP121.py, DenseASPP161.py)")
_CITYSCAPES = {"num_classes": 19}


def _count(trunk_features: int, channels: int, mid: int, out: int, num_classes: int) -> float:
    half = channels // 2
    trunk = trunk_features - 2 * channels + 2 * channels + channels * half + 2 * half
    head = 0
    for i, rate in enumerate(RATES):
        c_in = half + i * out
        head += (2 * c_in if i else 0) + c_in * mid + mid + 2 * mid + 9 * mid * out + out
    return float(trunk + head + (half + len(RATES) * out + 1) * num_classes)


@MODELS.register("denseaspp_densenet121", paper_params=_count(6_953_856, 1024, 128, 64, 19),
                 paper_kwargs=_CITYSCAPES, output_stride=8, source=_SOURCE)
def denseaspp_densenet121(*, num_classes: int, pretrained_backbone: Pretrained = False,
                          rates: Sequence[int] = RATES, dropout: float = DROPOUT,
                          align_corners: bool = True) -> DenseASPP:
    """DenseASPP on torchvision's DenseNet-121 (d_feature0 128, d_feature1 64)."""
    return DenseASPP(121, num_classes, rates, dropout, pretrained_backbone, align_corners)


@MODELS.register("denseaspp_densenet161", paper_params=_count(26_472_000, 2208, 512, 128, 19),
                 paper_kwargs=_CITYSCAPES, output_stride=8, source=_SOURCE)
def denseaspp_densenet161(*, num_classes: int, pretrained_backbone: Pretrained = False,
                          rates: Sequence[int] = RATES, dropout: float = DROPOUT,
                          align_corners: bool = True) -> DenseASPP:
    """DenseASPP on torchvision's DenseNet-161 (d_feature0 512, d_feature1 128), the release's checkpoint."""
    return DenseASPP(161, num_classes, rates, dropout, pretrained_backbone, align_corners)
