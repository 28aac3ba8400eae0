"""BiSeNet: a Spatial Path and a Context Path, fused, for real-time segmentation.

Yu, Wang, Peng, Gao, Yu and Sang, "BiSeNet: Bilateral Segmentation Network for Real-time Semantic
Segmentation", ECCV 2018 (arXiv:1808.00897). Layer sizes the paper leaves open (kernel sizes, the
128-channel width, the heads) follow the first author's release, TorchSeg (ycszen/TorchSeg,
``model/bisenet/cityscapes.bisenet.{R18,X39}/network.py``, ``furnace/seg_opr/seg_oprs.py``,
``furnace/base_model/xception.py``).

Spatial Path: three stride-2 conv + BN + ReLU (7×7 then two 3×3, 64 channels) and a 1×1 to 128, so
its features are at 1/8 with wide channels and a small receptive field. Context Path: a light
backbone downsampled to 1/32 (Xception39 or ResNet-18), global average pooling on its last stage
(1×1 conv + BN + ReLU, broadcast back), and an Attention Refinement Module (ARM) on the 1/32 and
1/16 features: 3×3 conv + BN + ReLU to 128, then global pooling → 1×1 conv → BN → sigmoid as a
channel attention. The 1/32 branch (plus the global context) is upsampled to 1/16, refined by a
3×3 conv, added to the 1/16 ARM, upsampled to 1/8 and refined again. The Feature Fusion Module
(FFM) concatenates both paths (256), mixes them with a 1×1 conv + BN + ReLU and re-weights the
result with a squeeze-excitation vector (pool → 1×1 → ReLU → 1×1 → sigmoid), adding it back:
``x + x · a``. Heads: 3×3 conv + BN + ReLU then a 1×1 classifier, bilinearly upsampled to the
input (``align_corners=True`` as the release). In training the two refined context-path features
(1/16 and 1/8) also get heads, returned as ``"aux_16"`` and ``"aux_8"``; the paper weights both
auxiliary losses with α = 1 (the config's ``loss.aux_weight``).

Xception39 has no published layer table and no torchvision weights; ours is the release's
``xception39``: a 3×3 stride-2 stem (8 channels) and a 3×3 stride-2 max-pool, then three stages of
4, 8 and 4 residual blocks (16, 32, 64 inner channels ×4 out: 64, 128, 256), each block three
depthwise-separable 3×3 convs (depthwise, then 1×1 + BN, ReLU after the first two), the first
block of a stage striding with a separable projection shortcut.
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import Pretrained, ResNetFeatures, load_pretrained
from semseg.models._blocks import ConvBNReLU, resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.50  # bisenet_xception39 1.50x, bisenet_resnet18 1.79x: the smaller one

SPATIAL_CHANNELS = 64  # release SpatialPath: 7×7/2, 3×3/2, 3×3/2 at 64, then 1×1 to the fusion width
FUSE_CHANNELS = 128  # release conv_channel: the spatial path's output, each ARM, the refines, the global context
MAIN_HEAD_CHANNELS = 64  # release BiSeNetHead(is_aux=False): 3×3 256→64 before the classifier
AUX_HEAD_CHANNELS = {"xception39": 128, "resnet18": 256}  # release BiSeNetHead(is_aux=True), per network.py
XCEPTION39_BLOCKS = (4, 8, 4)  # release xception39(): blocks per stage
XCEPTION39_WIDTHS = (16, 32, 64)  # inner widths; a block outputs 4× (Block.expansion)
XCEPTION39_STEM = 8


class SeparableConvBN(nn.Sequential):
    """Depthwise 3×3 (no bias) → 1×1 conv → BN → optional ReLU (the release's SeparableConvBnRelu)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, relu: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        super().__init__(*layers, *([nn.ReLU(inplace=True)] if relu else []))


class XceptionBlock(nn.Module):
    """Three separable convs (``mid``, ``mid``, ``4·mid``) + shortcut, ReLU after the sum; a strided
    block's shortcut is a separable conv without ReLU."""

    EXPANSION = 4

    def __init__(self, in_channels: int, mid: int, stride: int) -> None:
        super().__init__()
        out = mid * self.EXPANSION
        self.residual = nn.Sequential(SeparableConvBN(in_channels, mid, stride), SeparableConvBN(mid, mid),
                                      SeparableConvBN(mid, out, relu=False))
        self.proj = SeparableConvBN(in_channels, out, stride, relu=False) if stride > 1 else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.relu(shortcut + self.residual(x))


class Xception39(nn.Module):
    """Stem (3×3/2, 8) → max-pool 3×3/2 → three strided stages; ``{"8", "16", "32"}`` features."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNReLU(3, XCEPTION39_STEM, 3, stride=2), nn.MaxPool2d(3, 2, 1))
        stages, channels = [], XCEPTION39_STEM
        for blocks, mid in zip(XCEPTION39_BLOCKS, XCEPTION39_WIDTHS):
            layers = [XceptionBlock(channels, mid, 2)]
            channels = mid * XceptionBlock.EXPANSION
            layers += [XceptionBlock(channels, mid, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.channels = {"8": 64, "16": 128, "32": 256}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f8 = self.layer1(self.stem(x))
        f16 = self.layer2(f8)
        return {"8": f8, "16": f16, "32": self.layer3(f16)}


class ResNet18Context(nn.Module):
    """torchvision ResNet-18 (``ResNetFeatures``) keyed by stride: layer2/3/4 → ``{"8", "16", "32"}``."""

    def __init__(self, pretrained_backbone: Pretrained = False) -> None:
        super().__init__()
        self.trunk = ResNetFeatures(18, 32, pretrained_backbone)
        self.channels = {"8": 128, "16": 256, "32": 512}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.trunk(x)
        return {"8": feats["layer2"], "16": feats["layer3"], "32": feats["layer4"]}


class SpatialPath(nn.Sequential):
    """Three stride-2 conv + BN + ReLU (7×7, 3×3, 3×3; 64 channels) and a 1×1 to 128: features at 1/8."""

    def __init__(self, out_channels: int = FUSE_CHANNELS) -> None:
        super().__init__(ConvBNReLU(3, SPATIAL_CHANNELS, 7, stride=2),
                         ConvBNReLU(SPATIAL_CHANNELS, SPATIAL_CHANNELS, 3, stride=2),
                         ConvBNReLU(SPATIAL_CHANNELS, SPATIAL_CHANNELS, 3, stride=2),
                         ConvBNReLU(SPATIAL_CHANNELS, out_channels, 1))


class AttentionRefinement(nn.Module):
    """3×3 conv + BN + ReLU, then × sigmoid(BN(1×1 conv(global average pool))) per channel (paper Fig. 2b)."""

    def __init__(self, in_channels: int, out_channels: int = FUSE_CHANNELS) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_channels, out_channels, 1, bias=False),
                                       nn.BatchNorm2d(out_channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x * self.attention(x)


class FeatureFusion(nn.Module):
    """concat → 1×1 conv + BN + ReLU → ``x + x · sigmoid(1×1(ReLU(1×1(pool x))))`` (paper Fig. 2c)."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 1) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 1)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_channels, out_channels // reduction, 1, bias=False),
            nn.ReLU(inplace=True), nn.Conv2d(out_channels // reduction, out_channels, 1, bias=False), nn.Sigmoid())

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.cat([spatial, context], dim=1))
        return x + x * self.attention(x)


class Head(nn.Sequential):
    """3×3 conv + BN + ReLU → 1×1 classifier with bias (the release's BiSeNetHead, dropout off)."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__(ConvBNReLU(in_channels, mid_channels, 3), nn.Conv2d(mid_channels, num_classes, 1))


class BiSeNet(nn.Module):
    """Spatial Path ‖ Context Path (ARMs at 1/32, 1/16 + global context) → FFM → head; 2 aux heads in training."""

    def __init__(self, context: nn.Module, num_classes: int, aux_channels: int, aux: bool = True,
                 align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.spatial_path = SpatialPath()
        self.context_path = context
        c = context.channels
        self.global_context = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(c["32"], FUSE_CHANNELS, 1))
        self.arm32 = AttentionRefinement(c["32"])
        self.arm16 = AttentionRefinement(c["16"])
        self.refine32 = ConvBNReLU(FUSE_CHANNELS, FUSE_CHANNELS, 3)
        self.refine16 = ConvBNReLU(FUSE_CHANNELS, FUSE_CHANNELS, 3)
        self.ffm = FeatureFusion(2 * FUSE_CHANNELS, 2 * FUSE_CHANNELS)
        self.head = Head(2 * FUSE_CHANNELS, MAIN_HEAD_CHANNELS, num_classes)
        self.aux_16 = Head(FUSE_CHANNELS, aux_channels, num_classes) if aux else None
        self.aux_8 = Head(FUSE_CHANNELS, aux_channels, num_classes) if aux else None
        heads = [part for name, part in self.named_children() if name != "context_path"]
        for m in nn.ModuleList(heads).modules():  # the release's init_weight over its "business layers"
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def context(self, x: torch.Tensor, size8: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """The Context Path's refined features at 1/16 and at ``size8`` (the spatial path's 1/8)."""
        feats = self.context_path(x)
        f32, f16 = feats["32"], feats["16"]
        up32 = self.arm32(f32) + self.global_context(f32)  # the pooled 1×1 context broadcasts over 1/32
        c16 = self.refine32(resize_to(up32, f16.shape[-2:], self.align_corners))
        c8 = self.refine16(resize_to(self.arm16(f16) + c16, size8, self.align_corners))
        return c16, c8

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size, corners = x.shape[-2:], self.align_corners
        spatial = self.spatial_path(x)
        c16, c8 = self.context(x, spatial.shape[-2:])
        out = {"out": resize_to(self.head(self.ffm(spatial, c8)), size, corners)}
        if self.training and self.aux_16 is not None:  # the aux losses supervise the Context Path in training
            out["aux_16"] = resize_to(self.aux_16(c16), size, corners)
            out["aux_8"] = resize_to(self.aux_8(c8), size, corners)
        return out


# Parameters. The paper's FLOPs/parameters table (640×360 input; SegNet, ENet, BiSeNet1/2) gives BiSeNet1
# (Xception39) 5.8 and BiSeNet2 (ResNet-18) 49 "M" parameters and 2.9 / 10.8 GFLOPs; the release's nets have 1.54M /
# 12.89M parameters (TorchSeg issue #30 asks the same for Xception39). The table's figures are the fp32 weights in
# MiB of the deployed net (19 classes, no aux heads): 4 bytes × 1,541,963 = 5.88 MiB and × 12,894,163 = 49.19 MiB,
# printed 5.8 and 49. We register the count those MiB imply (MiB · 2^20 / 4) with one unit of the printed last digit
# as the tolerance (5.8 ≤ x < 5.9, 49 ≤ x < 50) and keep the printed figures as paper_table_params. The FLOPs
# (paper_gflops, multiply-adds at 640×360) compare with half of `python -m semseg.models`'s figure: 3.07 / 11.58 G
# multiply-adds here. Ours: Xception39 trunk 299,448 | ResNet-18 trunk 11,176,512; spatial path 91,968; global
# context 33,024 | 65,792; ARMs 476,160 | 918,528; refines 295,424; FFM 197,120; main head 147,584 + 65·C; each aux
# head 147,712 + 129·C | 295,424 + 257·C (re-derived in tests/test_models_bisenet.py).
_CITYSCAPES = {"num_classes": 19, "aux": False}
_SOURCE = ("Yu et al. 2018, arXiv:1808.00897, FLOPs/parameters table at 640×360: 5.8 / 49 read as fp32 MiB "
           "(doc/bisenet.md); layers as TorchSeg")
_MIB_AS_PARAMS = 2**20 / 4  # one MiB of fp32 weights


def _check_pretrained_path(pretrained_backbone: Pretrained) -> None:
    if pretrained_backbone is True:
        raise ConfigError("model.params.pretrained_backbone: torchvision has no ImageNet Xception39; "
                          "give a local state-dict file (keys as BiSeNet.context_path) or false")


@MODELS.register("bisenet_xception39", paper_params=5.8 * _MIB_AS_PARAMS, params_tolerance=0.1 / 5.8,
                 paper_kwargs=_CITYSCAPES, paper_table_params=5.8e6, paper_gflops=(2.9, (360, 640)),
                 output_stride=32, source=_SOURCE,
                 paper_camvid_miou=(65.6, "Yu et al. 2018, Table 8 (BiSeNet1, test split, 960×720, train+val)"))
def bisenet_xception39(*, num_classes: int, pretrained_backbone: Pretrained = False, aux: bool = True,
                       align_corners: bool = True) -> BiSeNet:
    """BiSeNet on Xception39 (the paper's BiSeNet1); ``pretrained_backbone`` is a local file or false."""
    _check_pretrained_path(pretrained_backbone)
    context = Xception39()
    load_pretrained(context, pretrained_backbone, None)
    return BiSeNet(context, num_classes, AUX_HEAD_CHANNELS["xception39"], aux, align_corners)


@MODELS.register("bisenet_resnet18", paper_params=49.0 * _MIB_AS_PARAMS, params_tolerance=1 / 49.0,
                 paper_kwargs=_CITYSCAPES, paper_table_params=49e6, paper_gflops=(10.8, (360, 640)),
                 output_stride=32, source=_SOURCE,
                 paper_camvid_miou=(68.7, "Yu et al. 2018, Table 8 (BiSeNet2, test split, 960×720, train+val)"))
def bisenet_resnet18(*, num_classes: int, pretrained_backbone: Pretrained = False, aux: bool = True,
                     align_corners: bool = True) -> BiSeNet:
    """BiSeNet on torchvision's ResNet-18 (the paper's BiSeNet2)."""
    context = ResNet18Context(pretrained_backbone)
    return BiSeNet(context, num_classes, AUX_HEAD_CHANNELS["resnet18"], aux, align_corners)
