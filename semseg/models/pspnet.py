"""PSPNet: dilated ResNet-50/101 with a pyramid pooling module and an auxiliary head.

Zhao, Shi, Qi, Wang and Jia, "Pyramid Scene Parsing Network", CVPR 2017
(arXiv:1612.01105).

A ResNet with the strides of layer3 and layer4 replaced by dilation 2 and 4
gives 2048-channel features at 1/8 of the input (§3.3). The pyramid pooling
module (PPM) average-pools them into 1×1, 2×2, 3×3 and 6×6 bins, reduces each
pooled map to 2048/4 = 512 channels with a 1×1 conv + BN + ReLU, upsamples all
four back and concatenates them with the features. A 3×3 conv (512) + BN +
ReLU, dropout 0.1 and a 1×1 classifier give the scores at stride 8. During
training a second, deeply supervised head on layer3 (§3.4) adds a loss weighted
0.4 (the config's ``loss.aux_weight``); it is returned as ``"aux"`` in training mode only:
inference throws it away, so eval mode skips computing and upsampling it (2–4 % of the forward).

Layer sizes follow the authors' PyTorch code (hszhao/semseg ``model/pspnet.py``)
and mmsegmentation's ``pspnet_r50-d8`` config: both dilate *every* block of
layer3 by 2 and of layer4 by 4 (torchvision's ``replace_stride_with_dilation``
keeps the first block of each at the previous rate; we reset it). The official
nets use the "deep stem" ResNet (ResNet-v1c: three 3×3 convs 64-64-128 instead
of the 7×7), offered here as ``*_deepstem`` (``DeepStemResNet`` in ``_backbones.py``,
shared with PSANet and UPerNet). Upsampling (PPM and logits) is bilinear with
``align_corners=True`` as in the official code, so its released weights give its
logits (``align_corners`` changes it). Any input size works; the official code
asserts sizes 8k+1 (where the logits upsample to exactly H × W, as here).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import DeepStemResNet, Pretrained, ResNetFeatures, dilate_stages
from semseg.models._blocks import ConvBNReLU, conv_head, resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.77
BINS = (1, 2, 3, 6)  # pyramid levels, paper §3.3 and Fig. 3
DILATION = {"layer3": 2, "layer4": 4}  # output stride 8, paper §3.3 / Fig. 3(b)


class PyramidPooling(nn.Module):
    """Pool to each bin size, reduce to ``in/len(bins)`` channels, upsample, concat with the input."""

    def __init__(self, in_channels: int, bins: Sequence[int] = BINS, align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, reduced, 1)) for b in bins
        )
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [resize_to(stage(x), size, self.align_corners) for stage in self.stages], dim=1)


class PSPNet(nn.Module):
    """Dilated ResNet (stride 8) → PPM → 3×3 conv → classifier; optional layer3 auxiliary head."""

    def __init__(
        self,
        depth: int,
        num_classes: int,
        deep_stem: bool = False,
        aux: bool = True,
        dropout: float = 0.1,
        pretrained_backbone: Pretrained = False,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.params.dropout: must be in [0, 1), got {dropout}")
        if deep_stem:
            self.backbone: ResNetFeatures = DeepStemResNet(depth, pretrained_backbone)
        else:
            self.backbone = ResNetFeatures(depth, output_stride=8, pretrained_backbone=pretrained_backbone)
        dilate_stages(self.backbone, DILATION)
        channels = self.backbone.channels
        self.ppm = PyramidPooling(channels["layer4"], BINS, align_corners)
        self.head = conv_head(self.ppm.out_channels, 512, num_classes, dropout)
        self.aux = conv_head(channels["layer3"], 256, num_classes, dropout) if aux else None
        for module in [self.head, self.ppm] + ([self.aux] if aux else []):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for head in [self.head] + ([self.aux] if aux else []):  # small logits at the start (as mmseg)
            nn.init.normal_(head[-1].weight, std=0.01)
            nn.init.zeros_(head[-1].bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        size, corners = x.shape[-2:], self.align_corners
        out = {"out": resize_to(self.head(self.ppm(feats["layer4"])), size, corners)}
        if self.aux is not None and self.training:  # a training device only (§3.4); eval skips its cost
            out["aux"] = resize_to(self.aux(feats["layer3"]), size, corners)
        return out


# Parameter counts: the paper gives none, so these are derived from its description (§3.3, §3.4)
# and checked layer by layer in tests/test_models_pspnet.py. Trunk (torchvision ResNet, no fc):
# 23,508,032 (R-50) / 42,500,160; the deep stem adds 123,776. PPM 4·(2048·512 + 2·512)
# = 4,198,400; 3×3 conv 4096·512·9 + 2·512 = 18,875,392; aux 3×3 conv 1024·256·9 + 2·256 =
# 2,359,808; classifiers 513·C and 257·C. C = 150 (ADE20K, the paper's ResNet-50 ablations,
# §5.1) for the ResNet-50 nets, C = 19 (Cityscapes, §5.3, as mmseg's pspnet_r50-d8 config) for
# ResNet-101. All counts include the aux head, as trained.
_SOURCE = "Zhao et al. 2017, arXiv:1612.01105, §3.3–3.4 (count derived from the layer sizes; paper gives none)"
_ADE, _CITYSCAPES = {"num_classes": 150}, {"num_classes": 19}


def _count(trunk: int, num_classes: int, deep_stem: bool) -> float:
    return float(trunk + 4_198_400 + 18_875_392 + 2_359_808 + 770 * num_classes + (123_776 if deep_stem else 0))


@MODELS.register("pspnet50", paper_params=_count(23_508_032, 150, False), paper_kwargs=_ADE,
                 output_stride=8, source=_SOURCE)
def pspnet50(*, num_classes: int, pretrained_backbone: Pretrained = False, aux: bool = True,
             dropout: float = 0.1, align_corners: bool = True) -> PSPNet:
    """PSPNet on torchvision's ResNet-50 (7×7 stem), so ImageNet weights are available."""
    return PSPNet(50, num_classes, False, aux, dropout, pretrained_backbone, align_corners)


@MODELS.register("pspnet101", paper_params=_count(42_500_160, 19, False), paper_kwargs=_CITYSCAPES,
                 output_stride=8, source=_SOURCE)
def pspnet101(*, num_classes: int, pretrained_backbone: Pretrained = False, aux: bool = True,
              dropout: float = 0.1, align_corners: bool = True) -> PSPNet:
    """PSPNet on torchvision's ResNet-101 (7×7 stem)."""
    return PSPNet(101, num_classes, False, aux, dropout, pretrained_backbone, align_corners)


@MODELS.register("pspnet50_deepstem", paper_params=_count(23_508_032, 150, True), paper_kwargs=_ADE,
                 output_stride=8, source=_SOURCE)
def pspnet50_deepstem(*, num_classes: int, pretrained_backbone: Pretrained = False, aux: bool = True,
                      dropout: float = 0.1, align_corners: bool = True) -> PSPNet:
    """PSPNet on the deep-stem ResNet-50 of the official release (local weights only)."""
    return PSPNet(50, num_classes, True, aux, dropout, pretrained_backbone, align_corners)


@MODELS.register("pspnet101_deepstem", paper_params=_count(42_500_160, 19, True), paper_kwargs=_CITYSCAPES,
                 output_stride=8, source=_SOURCE)
def pspnet101_deepstem(*, num_classes: int, pretrained_backbone: Pretrained = False, aux: bool = True,
                       dropout: float = 0.1, align_corners: bool = True) -> PSPNet:
    """PSPNet on the deep-stem ResNet-101 of the official release (local weights only)."""
    return PSPNet(101, num_classes, True, aux, dropout, pretrained_backbone, align_corners)
