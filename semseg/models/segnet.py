"""SegNet and SegNet-Basic: an encoder-decoder whose decoder upsamples with the encoder's pooling indices.

Badrinarayanan, Kendall and Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture
for Image Segmentation", TPAMI 2017 (arXiv:1511.00561). Layer details from the authors' Caffe
release (alexgkendall/SegNet-Tutorial, ``Models/segnet_train.prototxt`` and
``Models/segnet_basic_train.prototxt``).

The encoder is VGG-16's 13 convolutional layers (no fully connected layers), each followed by
BatchNorm and ReLU, with a 2×2 stride-2 max-pool after each of the five stages. Each pool keeps
its argmax indices. Each decoder stage max-unpools with the indices of the matching encoder stage:
every value goes back to the position its maximum came from, and the rest of the map is zero.
Trained convolutions then make the sparse map dense again. So the decoder learns no upsampling,
and the net keeps only indices, not whole encoder feature maps (§3). The decoder mirrors the encoder's
widths; its last convolution is the 3×3 classifier (``conv1_1_D``, no BatchNorm).

SegNet-Basic (§3.2, Table 1) is the small net the paper uses to compare decoder variants. It has
4 encoder and 4 decoder stages, each one 7×7 convolution with 64 features and BatchNorm. The
encoder has ReLUs and the decoder has none (the release's prototxt). A local response normalisation
(LRN) of the input comes first, and a 1×1 classifier comes last.

Changes, all for arbitrary input sizes or documented in doc/segnet.md: pools use ``ceil_mode=True``
(Caffe's rounding, which the release relies on for 360×480: 45 → 23) and every unpooling is given its
encoder's pre-pool size, which the release hard-codes per layer (``upsample_h: 23``,
``pad_out_h``). Any H×W then comes back as H×W, with no resize.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from semseg.models._backbones import Pretrained, load_pretrained
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 2.11

# VGG-16, configuration "D" (Simonyan & Zisserman 2015, Table 1): conv widths of the five encoder stages.
VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Decoder widths, deepest stage first (segnet_train.prototxt conv5_3_D … conv1_2_D). Each stage mirrors its
# encoder stage; its last conv narrows to the next stage's width. The classifier (conv1_1_D, 3×3) follows.
DECODER_STAGES: tuple[tuple[int, ...], ...] = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))
# SegNet-Basic (§3.2; segnet_basic_train.prototxt): 4 stages of one 7×7 conv with 64 features each way.
BASIC_DEPTH, BASIC_FEATURES, BASIC_KERNEL = 4, 64, 7
# The release's input "norm" layer (Caffe LRN across channels: k 1, local_size 5, alpha 1e-4, beta 0.75).
BASIC_LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}
BN_SHIFT_INIT = 0.001  # the release's BN shift_filler (scale_filler 1)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> list[nn.Module]:
    """Conv (with bias, as the Caffe release and torchvision's vgg16_bn) → BatchNorm (→ ReLU)."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
                               nn.BatchNorm2d(out_channels)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


def _pool() -> nn.MaxPool2d:
    # ceil_mode: Caffe's rounding; an odd side's last row/column is pooled alone and unpooled back to it
    return nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)


def vgg16_bn_features() -> nn.Sequential:
    """VGG-16's 13 conv + BN + ReLU layers and 5 index-keeping pools, at torchvision ``vgg16_bn().features``
    indices (pools at 6, 13, 23, 33, 43), so its ImageNet state dict loads by name."""
    layers: list[nn.Module] = []
    in_channels = 3
    for widths in VGG16_STAGES:
        for width in widths:
            layers += _conv_bn(in_channels, width, 3, relu=True)
            in_channels = width
        layers.append(_pool())
    return nn.Sequential(*layers)


def _vgg16_bn_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``vgg16_bn`` file → our encoder's keys (the same ``features.*``; the classifier is dropped).

    The file predates PyTorch 0.4 and has no BN ``num_batches_tracked``; it only counts updates (unused at the
    default momentum), so a missing one starts at 0."""
    out = {k: v for k, v in state.items() if k.startswith("features.")}
    for key in [k for k in out if k.endswith(".running_mean")]:
        out.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0))
    return out


class PoolingEncoder(nn.Module):
    """Runs ``features`` and keeps, for each max-pool, its argmax indices and the size it pooled."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Size]]]:
        pools: list[tuple[torch.Tensor, torch.Size]] = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                size = x.shape[-2:]
                x, indices = layer(x)
                pools.append((indices, size))
            else:
                x = layer(x)
        return x, pools


class UnpoolingDecoder(nn.Module):
    """One stage per encoder pool, deepest first: max-unpool with that pool's indices and size, then convs."""

    def __init__(self, stages: Sequence[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor, pools: list[tuple[torch.Tensor, torch.Size]]) -> torch.Tensor:
        for stage, (indices, size) in zip(self.stages, reversed(pools), strict=True):
            x = stage(F.max_unpool2d(x, indices, 2, 2, output_size=size))
        return x


class SegNet(nn.Module):
    """(Input LRN →) encoder (pools keep indices) → decoder (unpools with them) → classifier, at input size."""

    def __init__(self, features: nn.Sequential, decoder_stages: Sequence[nn.Module], classifier: nn.Conv2d,
                 input_norm: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.input_norm = input_norm
        self.encoder = PoolingEncoder(features)
        self.decoder = UnpoolingDecoder(decoder_stages)
        self.classifier = classifier
        self.output_stride = 2 ** len(decoder_stages)
        _init_caffe_msra(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.input_norm is not None:
            x = self.input_norm(x)
        x, pools = self.encoder(x)
        return {"out": self.classifier(self.decoder(x, pools))}


def _init_caffe_msra(model: nn.Module) -> None:
    """The release's fillers: MSRA (He, fan-in) weights and zero biases, BN scale 1 and shift 0.001."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, BN_SHIFT_INIT)


def _segnet_decoder() -> list[nn.Sequential]:
    stages, in_channels = [], VGG16_STAGES[-1][-1]
    for widths in DECODER_STAGES:
        layers: list[nn.Module] = []
        for width in widths:
            layers += _conv_bn(in_channels, width, 3, relu=True)
            in_channels = width
        stages.append(nn.Sequential(*layers))
    return stages


def _basic_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(BASIC_DEPTH):
        layers += _conv_bn(3 if i == 0 else BASIC_FEATURES, BASIC_FEATURES, BASIC_KERNEL, relu=True)
        layers.append(_pool())
    return nn.Sequential(*layers)


# Counts (CamVid, 11 classes as the release). SegNet: VGG-16 convs 14,714,688 + their BNs 8,448; decoder convs
# 14,712,448 + BNs 7,424; 3×3 classifier 577 per class → 29,449,355. The registered figure is ENet's Table 3
# count for SegNet, 29.46M (FC-DenseNet's Table 2: 29.5M), 0.04 % above ours. SegNet-Basic: 8 7×7 convs
# 1,415,360 + BNs 1,024 + 1×1 classifier 65 per class → 1,416,587 vs the paper's 1.425M (Table 1), 0.6 % below;
# the paper does not say what it counted. Exact counts are pinned in tests/test_models_segnet.py.
_CAMVID = {"num_classes": 11}


@MODELS.register("segnet", paper_params=29.46e6, paper_kwargs=_CAMVID, output_stride=32,
                 paper_camvid_miou=(55.6, "Badrinarayanan et al. 2017, Table 2 (test split; ENet's Table 5 quotes it)"),
                 source="Paszke et al. 2016 (ENet), arXiv:1606.02147, Table 3: SegNet 29.46M "
                        "(Jégou et al. 2017, Table 2: 29.5M)")
def segnet(*, num_classes: int, pretrained_backbone: Pretrained = False) -> SegNet:
    """SegNet: VGG-16-BN encoder, mirrored decoder with ReLU, 3×3 classifier; ImageNet VGG-16-BN on request."""
    decoder = _segnet_decoder()
    model = SegNet(vgg16_bn_features(), decoder, nn.Conv2d(DECODER_STAGES[-1][-1], num_classes, 3, padding=1))
    from torchvision.models import VGG16_BN_Weights  # lazy, like fcn.py: a slow import

    load_pretrained(model.encoder, pretrained_backbone, VGG16_BN_Weights.IMAGENET1K_V1, _vgg16_bn_keys)
    return model


@MODELS.register("segnet_basic", paper_params=1.425e6, paper_kwargs=_CAMVID, output_stride=16,
                 paper_camvid_miou=(46.3, "Badrinarayanan et al. 2017, Table 2 (test split)"),
                 source="Badrinarayanan et al. 2017, arXiv:1511.00561, Table 1 (SegNet-Basic: 1.425M)")
def segnet_basic(*, num_classes: int, lrn: bool = True) -> SegNet:
    """SegNet-Basic: 4 + 4 stages of one 7×7 conv (64 features), no decoder ReLU; ``lrn``: the input LRN."""
    decoder = [nn.Sequential(*_conv_bn(BASIC_FEATURES, BASIC_FEATURES, BASIC_KERNEL, relu=False))
               for _ in range(BASIC_DEPTH)]
    norm = nn.LocalResponseNorm(**BASIC_LRN) if lrn else None
    return SegNet(_basic_features(), decoder, nn.Conv2d(BASIC_FEATURES, num_classes, 1), input_norm=norm)
