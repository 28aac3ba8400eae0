"""UPerNet: a ResNet with a pyramid pooling module on its last stage and an FPN that fuses all four stages.

Xiao, Liu, Zhou, Jiang and Sun, "Unified Perceptual Parsing for Scene Understanding", ECCV 2018
(arXiv:1807.10221), §3.2 and Fig. 3, restricted to its scene-parsing (object/stuff) head; layer sizes
from the authors' released code (CSAILVision/semantic-segmentation-pytorch, ``mit_semseg/models/models.py``
``class UPerNet`` and ``config/ade20k-resnet50-upernet.yaml``).

The trunk is a plain (undilated) ResNet: its four stages give features at 1/4, 1/8, 1/16 and 1/32. A
PSPNet pyramid pooling module (bins 1, 2, 3, 6, 512 channels each) on the 1/32 stage supplies the global
prior, and a 3×3 conv turns its 4096-channel concatenation into the FPN's top level (``fpn_dim`` channels).
The FPN then runs top-down: each lower stage is projected to ``fpn_dim`` channels by a 1×1 conv (+ BN,
ReLU), the level above is upsampled bilinearly and added, and a 3×3 conv (+ BN, ReLU) smooths the sum. All
four levels are upsampled to 1/4, concatenated (4·``fpn_dim`` channels), fused by a 3×3 conv (``fpn_dim``)
and classified by a 1×1 conv; the logits at 1/4 are upsampled to the input. Output stride 4, no auxiliary
head (the released UPerNet configs train none; their ``deep_sup_scale`` is read only by the PPM-deepsup
decoder).

``fpn_dim`` is 512 by default: the released configs (``config/ade20k-resnet{50,101}-upernet.yaml``) select
``arch_decoder: upernet``, which ``ModelBuilder.build_decoder`` builds with ``fpn_dim=512``; 256 is the
release's ``upernet_lite`` (``model.params.fpn_dim: 256``, 22.3M fewer parameters). The release's trunk is
the deep-stem ResNet (``_backbones.DeepStemResNet``); the ``*_deepstem`` variants are built on it so that its
``encoder_epoch_*.pth`` / ``decoder_epoch_*.pth`` load (``semseg/official/upernet.py``), the plain ones use
torchvision's 7×7 stem and its ImageNet weights.

As the released code, a PPM branch pools, *upsamples* and then applies its 1×1 conv + BN + ReLU (PSPNet
convolves before upsampling); the weights are the same shape, the activations are not, so we follow the
release. Every resize is bilinear with ``align_corners=False`` (the release's setting).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import DeepStemResNet, Pretrained, ResNetFeatures
from semseg.models._blocks import ConvBNReLU, resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.72
BINS = (1, 2, 3, 6)  # pool_scales in the release (PSPNet's bins)
PPM_CHANNELS = 512  # each PPM branch (release: nn.Conv2d(fc_dim, 512, 1))
FPN_CHANNELS = 512  # fpn_dim of the release's "upernet" decoder (models.py build_decoder; upernet_lite: 256)
STAGES = ("layer1", "layer2", "layer3", "layer4")


class UPerPPM(nn.Module):
    """Pool to each bin, upsample to the input size, then 1×1 conv + BN + ReLU; concat with the input; 3×3 fuse."""

    def __init__(self, in_channels: int, out_channels: int, bins: Sequence[int] = BINS,
                 align_corners: bool = False) -> None:
        super().__init__()
        if not bins or any(int(b) < 1 for b in bins):
            raise ConfigError(f"model.params.bins: needs bin sizes >= 1, got {list(bins)}")
        self.align_corners = align_corners
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(int(b)) for b in bins)
        self.convs = nn.ModuleList(ConvBNReLU(in_channels, PPM_CHANNELS, 1) for _ in bins)
        self.fuse = ConvBNReLU(in_channels + PPM_CHANNELS * len(bins), out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        branches = [conv(resize_to(pool(x), size, self.align_corners)) for pool, conv in zip(self.pools, self.convs)]
        return self.fuse(torch.cat([x] + branches, dim=1))


class FPNFuse(nn.Module):
    """Top-down FPN over ``in_channels`` (lowest stage first; the top level comes in already reduced).

    Returns the concatenation of every level upsampled to the lowest one (``len(in_channels)·channels``).
    """

    def __init__(self, in_channels: Sequence[int], channels: int = FPN_CHANNELS, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.lateral = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.smooth = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.out_channels = channels * len(in_channels)

    def forward(self, feats: Sequence[torch.Tensor], top: torch.Tensor) -> torch.Tensor:
        levels, f = [top], top
        for i in reversed(range(len(self.lateral))):
            lateral = self.lateral[i](feats[i])
            f = lateral + resize_to(f, lateral.shape[-2:], self.align_corners)
            levels.append(self.smooth[i](f))
        size = levels[-1].shape[-2:]  # the lowest (finest) level, 1/4 of the input
        return torch.cat([resize_to(level, size, self.align_corners) for level in reversed(levels)], dim=1)


class UPerNet(nn.Module):
    """ResNet → PPM on layer4 → FPN over layer1–4 → 3×3 fuse → classifier at 1/4 → bilinear to the input."""

    def __init__(self, depth: int, num_classes: int, bins: Sequence[int] = BINS,
                 pretrained_backbone: Pretrained = False, align_corners: bool = False, deep_stem: bool = False,
                 fpn_dim: int = FPN_CHANNELS) -> None:
        super().__init__()
        if fpn_dim < 1:
            raise ConfigError(f"model.params.fpn_dim: must be >= 1, got {fpn_dim}")
        self.align_corners = align_corners
        if deep_stem:
            self.backbone: ResNetFeatures = DeepStemResNet(depth, pretrained_backbone, output_stride=32)
        else:
            self.backbone = ResNetFeatures(depth, output_stride=32, pretrained_backbone=pretrained_backbone)
        channels = [self.backbone.channels[s] for s in STAGES]
        self.ppm = UPerPPM(channels[-1], fpn_dim, bins, align_corners)
        self.fpn = FPNFuse(channels, fpn_dim, align_corners)
        self.fuse = ConvBNReLU(self.fpn.out_channels, fpn_dim, 3)
        self.classifier = nn.Conv2d(fpn_dim, num_classes, 1)
        for module in (self.ppm, self.fpn, self.fuse):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        stages = [feats[s] for s in STAGES]
        fused = self.fpn(stages, self.ppm(stages[-1]))
        logits = self.classifier(self.fuse(fused))
        return {"out": resize_to(logits, x.shape[-2:], self.align_corners)}


# Parameter counts: the paper gives none, so they are derived from the released decoder's layer sizes and
# re-derived in tests/test_models_upernet.py. Trunk (torchvision ResNet, no fc): 23,508,032 (R-50) / 42,500,160
# the release's deep stem adds 123,776. Decoder at fpn_dim 512 (the release's "upernet"): PPM 1×1
# branches 4·(2048·512 + 2·512) = 4,198,400, PPM 3×3 fuse 4096·512·9 + 1,024 = 18,875,392, FPN laterals
# (256 + 512 + 1024)·512 + 3·1,024 = 920,576, FPN 3×3 smoothing 3·(512·512·9 + 1,024) = 7,080,960, fusion 3×3
# 2048·512·9 + 1,024 = 9,438,208; classifier 513 per class. C = 150 (ADE20K SceneParsing, the release's
# benchmark): the released decoder_epoch_*.pth holds 40,590,486 parameters.
_SOURCE = ("Xiao et al. 2018, arXiv:1807.10221, §3.2; count derived from the released decoder "
           "(CSAILVision/semantic-segmentation-pytorch models.py UPerNet, fpn_dim 512; paper gives none)")
_ADE = {"num_classes": 150}
DECODER_PARAMS = 4_198_400 + 18_875_392 + 920_576 + 7_080_960 + 9_438_208
DEEP_STEM_EXTRA = 123_776  # 3×3 convs 3→64, 64→64, 64→128 + BN, minus the 7×7 conv + BN; layer1 taking 128


def _count(trunk: int, deep_stem: bool) -> float:
    return float(trunk + DECODER_PARAMS + 513 * 150 + (DEEP_STEM_EXTRA if deep_stem else 0))


@MODELS.register("upernet_resnet50", paper_params=_count(23_508_032, False), paper_kwargs=_ADE, output_stride=4,
                 source=_SOURCE)
def upernet_resnet50(*, num_classes: int, pretrained_backbone: Pretrained = False, bins: Sequence[int] = BINS,
                     align_corners: bool = False, fpn_dim: int = FPN_CHANNELS) -> UPerNet:
    """UPerNet on torchvision's ResNet-50 (ImageNet weights available), the release's ade20k-resnet50-upernet."""
    return UPerNet(50, num_classes, bins, pretrained_backbone, align_corners, False, fpn_dim)


@MODELS.register("upernet_resnet101", paper_params=_count(42_500_160, False), paper_kwargs=_ADE, output_stride=4,
                 source=_SOURCE)
def upernet_resnet101(*, num_classes: int, pretrained_backbone: Pretrained = False, bins: Sequence[int] = BINS,
                      align_corners: bool = False, fpn_dim: int = FPN_CHANNELS) -> UPerNet:
    """UPerNet on torchvision's ResNet-101, the release's ade20k-resnet101-upernet."""
    return UPerNet(101, num_classes, bins, pretrained_backbone, align_corners, False, fpn_dim)


@MODELS.register("upernet_resnet50_deepstem", paper_params=_count(23_508_032, True), paper_kwargs=_ADE,
                 output_stride=4, source=_SOURCE)
def upernet_resnet50_deepstem(*, num_classes: int, pretrained_backbone: Pretrained = False,
                              bins: Sequence[int] = BINS, align_corners: bool = False,
                              fpn_dim: int = FPN_CHANNELS) -> UPerNet:
    """UPerNet on the release's deep-stem ResNet-50, for its weights (semseg/official/upernet.py; local files only)."""
    return UPerNet(50, num_classes, bins, pretrained_backbone, align_corners, True, fpn_dim)


@MODELS.register("upernet_resnet101_deepstem", paper_params=_count(42_500_160, True), paper_kwargs=_ADE,
                 output_stride=4, source=_SOURCE)
def upernet_resnet101_deepstem(*, num_classes: int, pretrained_backbone: Pretrained = False,
                               bins: Sequence[int] = BINS, align_corners: bool = False,
                               fpn_dim: int = FPN_CHANNELS) -> UPerNet:
    """UPerNet on the release's deep-stem ResNet-101 (local weights only)."""
    return UPerNet(101, num_classes, bins, pretrained_backbone, align_corners, True, fpn_dim)
