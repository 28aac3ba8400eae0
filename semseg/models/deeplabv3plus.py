"""DeepLab v3+: the DeepLab v3 encoder plus a light decoder on the stride-4 features.

Chen, Zhu, Papandreou, Schroff and Adam, "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation", ECCV 2018 (arXiv:1802.02611); layer
details from the authors' TensorFlow code (tensorflow/models ``research/deeplab``,
``model.py`` ``refine_by_decoder`` and ``core/feature_extractor.py``).

Encoder: DeepLab v3 (``semseg/models/deeplabv3.py``): a dilated backbone at output
stride 16 (training) or 8 (evaluation), ASPP (1×1, 3×3 at rates 6/12/18 doubled at
OS 8, image pooling; 256 channels) and its 1×1 projection + dropout 0.1. Decoder
(§3.1, Fig. 2, chosen by Tables 1–2): the backbone's 1/4-resolution features are
reduced to 48 channels by a 1×1 conv + BN + ReLU ("fewer channels so they do not
outweigh the rich encoder features"), the encoder output is upsampled bilinearly
to 1/4 and concatenated (304 channels), two 3×3 convs (256, BN, ReLU) refine
them, a 1×1 conv classifies, and a bilinear ×4 brings the logits to the input.
All resizing uses ``align_corners=True`` as the TF code.

Backbones: ResNet-50/101 (the paper's Table 3 network; low-level features are
layer1's output, the TF code's ``block1/unit_2`` at 1/4) and torchvision's
MobileNetV2, whose low-level features are the TF code's decoder end point for it,
``layer_4/depthwise_output`` (the 144-channel depthwise output of the second
24-channel block, torchvision ``features[3]``), and whose high-level features
are ``layer_18`` (320 channels; the 1280-channel conv is dropped, as there). The
paper's Xception-65 is not included: torchvision has no ImageNet weights for it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from semseg.models._backbones import Pretrained, load_pretrained
from semseg.models._blocks import ConvBNReLU, resize_to
from semseg.models.deeplabv3 import (ASPP, ASPP_CHANNELS, ASPP_PARAMS, MULTI_GRID, RATES, DeepLabResNet,
                                     SwitchableStride, check_output_stride, init_head)
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.70  # deeplabv3plus_mobilenetv2 1.70x, deeplabv3plus_resnet50 1.82x: the smaller one
LOW_CHANNELS = 48  # §3.1, Table 1: the 1×1 reduction of the low-level features
DECODER_CHANNELS = 256  # §3.1, Table 2: two [3×3, 256] convs


class MobileNetV2Features(nn.Module):
    """torchvision MobileNetV2 ``features[:18]`` at output stride 16 or 8, with the stride-4 depthwise output.

    Dilation follows the TF code (slim ``mobilenet.py``): once the stride reaches the target,
    a block that would stride runs at stride 1 with the current rate, and later blocks
    get the rate multiplied by the skipped stride.
    """

    LOW_BLOCK = 3  # TF ``layer_4``: the second 24-channel block, at 1/4

    def __init__(self, pretrained_backbone: Pretrained = False) -> None:
        super().__init__()
        from torchvision.models import MobileNet_V2_Weights, mobilenet_v2  # lazy, like _backbones

        net = mobilenet_v2(weights=None)
        load_pretrained(net, pretrained_backbone, MobileNet_V2_Weights.IMAGENET1K_V1)
        self.features = net.features[:18]
        self._spatial = [next(m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
                         for block in self.features]
        self._strides = [conv.stride[0] for conv in self._spatial]
        self.channels = {"low": 144, "high": 320}
        self.output_stride = 0
        self.set_output_stride(16)

    def set_output_stride(self, output_stride: int) -> None:
        check_output_stride(output_stride)
        current, rate = 1, 1
        for conv, stride in zip(self._spatial, self._strides):
            if current == output_stride:
                conv.stride, dilation = (1, 1), rate
                rate *= stride
            else:
                conv.stride, dilation = (stride, stride), 1
                current *= stride
            conv.dilation = conv.padding = (dilation, dilation)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.features[: self.LOW_BLOCK](x)
        block = self.features[self.LOW_BLOCK]
        low = block.conv[:2](x)  # expand 1×1 + depthwise 3×3 (each BN + ReLU6): 144 channels
        x = x + block.conv[2:](low)  # the block's linear projection and residual
        return {"low": low, "high": self.features[self.LOW_BLOCK + 1:](x)}


class DeepLabV3Plus(SwitchableStride):
    """Backbone → ASPP → ×4 up, concat with reduced 1/4 features → 2× 3×3 conv → classifier → ×4 up."""

    def __init__(self, backbone: nn.Module, num_classes: int, output_stride: int = 16,
                 eval_output_stride: Optional[int] = 8, rates: Sequence[int] = RATES, dropout: float = 0.1,
                 align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.backbone = backbone
        channels = backbone.channels
        self.aspp = ASPP(channels["high"], rates, ASPP_CHANNELS, dropout, align_corners)
        self.reduce = ConvBNReLU(channels["low"], LOW_CHANNELS, 1)
        self.decoder = nn.Sequential(ConvBNReLU(ASPP_CHANNELS + LOW_CHANNELS, DECODER_CHANNELS, 3),
                                     ConvBNReLU(DECODER_CHANNELS, DECODER_CHANNELS, 3))
        self.classifier = nn.Conv2d(DECODER_CHANNELS, num_classes, 1)
        init_head([self.aspp, self.reduce, self.decoder], self.classifier)
        self.setup_strides(output_stride, eval_output_stride)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        low = self.reduce(feats["low"])
        high = resize_to(self.aspp(feats["high"]), low.shape[-2:], self.align_corners)
        logits = self.classifier(self.decoder(torch.cat([high, low], dim=1)))
        return {"out": resize_to(logits, x.shape[-2:], self.align_corners)}


# Parameter counts: the paper gives none; derived from the layer sizes and re-derived in
# tests/test_models_deeplabv3plus.py. Decoder: 1×1 reduction (256→48 for ResNet: 12,384; 144→48
# for MobileNetV2: 7,008), 3×3 304→256 700,928, 3×3 256→256 590,336, classifier 257 per class.
# ASPP 15,535,104 on 2048 channels, 2,706,432 on MobileNetV2's 320. Trunks: ResNet-50/101 without
# fc 23,508,032 / 42,500,160; MobileNetV2 features[:18] 1,811,712. C = 21 (PASCAL VOC 2012).
_SOURCE = "Chen et al. 2018, arXiv:1802.02611, §3.1 (count derived from the layer sizes; paper gives none)"
_VOC = {"num_classes": 21}
_DECODER = 700_928 + 590_336 + 257 * 21


def _resnet(depth: int, num_classes: int, pretrained_backbone: Pretrained, output_stride: int,
            eval_output_stride: Optional[int], multi_grid: Sequence[int], rates: Sequence[int], dropout: float,
            align_corners: bool) -> DeepLabV3Plus:
    backbone = DeepLabResNet(depth, multi_grid, pretrained_backbone)
    return DeepLabV3Plus(backbone, num_classes, output_stride, eval_output_stride, rates, dropout, align_corners)


@MODELS.register("deeplabv3plus_resnet50", paper_params=23_508_032.0 + ASPP_PARAMS + 12_384 + _DECODER,
                 paper_kwargs=_VOC, output_stride=16, eval_output_stride=8, source=_SOURCE)
def deeplabv3plus_resnet50(*, num_classes: int, pretrained_backbone: Pretrained = False, output_stride: int = 16,
                           eval_output_stride: Optional[int] = 8, multi_grid: Sequence[int] = MULTI_GRID,
                           rates: Sequence[int] = RATES, dropout: float = 0.1,
                           align_corners: bool = True) -> DeepLabV3Plus:
    """DeepLab v3+ on torchvision's ResNet-50; decoder on layer1 (1/4, 256 channels)."""
    return _resnet(50, num_classes, pretrained_backbone, output_stride, eval_output_stride, multi_grid, rates,
                   dropout, align_corners)


@MODELS.register("deeplabv3plus_resnet101", paper_params=42_500_160.0 + ASPP_PARAMS + 12_384 + _DECODER,
                 paper_kwargs=_VOC, output_stride=16, eval_output_stride=8, source=_SOURCE)
def deeplabv3plus_resnet101(*, num_classes: int, pretrained_backbone: Pretrained = False, output_stride: int = 16,
                            eval_output_stride: Optional[int] = 8, multi_grid: Sequence[int] = MULTI_GRID,
                            rates: Sequence[int] = RATES, dropout: float = 0.1,
                            align_corners: bool = True) -> DeepLabV3Plus:
    """DeepLab v3+ on torchvision's ResNet-101 (the paper's Table 3 backbone)."""
    return _resnet(101, num_classes, pretrained_backbone, output_stride, eval_output_stride, multi_grid, rates,
                   dropout, align_corners)


@MODELS.register("deeplabv3plus_mobilenetv2", paper_params=1_811_712.0 + 2_706_432 + 7_008 + _DECODER,
                 paper_kwargs=_VOC, output_stride=16, eval_output_stride=8, source=_SOURCE)
def deeplabv3plus_mobilenetv2(*, num_classes: int, pretrained_backbone: Pretrained = False, output_stride: int = 16,
                              eval_output_stride: Optional[int] = 8, rates: Sequence[int] = RATES,
                              dropout: float = 0.1, align_corners: bool = True) -> DeepLabV3Plus:
    """DeepLab v3+ on torchvision's MobileNetV2 (decoder end point as the TF code's mobilenet_v2)."""
    backbone = MobileNetV2Features(pretrained_backbone)
    return DeepLabV3Plus(backbone, num_classes, output_stride, eval_output_stride, rates, dropout, align_corners)
