"""Dilated Residual Networks: DRN-C-26/42 and DRN-D-22/38/54/105 with the DRNSeg head.

Yu, Koltun and Funkhouser, "Dilated Residual Networks", CVPR 2017
(arXiv:1705.09914); layer table and segmentation head from the authors' code
(fyu/drn, ``drn.py`` and ``segment.py`` ``DRNSeg``).

A DRN is a ResNet whose last two downsamplings are replaced by dilation, so
the features stay at 1/8 of the input. It has eight levels with 16, 32, 64,
128, 256, 512, 512, 512 channels; levels 2-4 halve the resolution, level 5 is
dilated by 2, level 6 by 4. Dilation makes "gridding" artefacts, which the
C/D variants remove ("degridding", §4): levels 7 and 8 are dilated by 2 and 1
and have *no* residual connection, so they can filter out the high-frequency
grid pattern instead of passing it through. Both start with a stride-1 7×7
conv (no max-pool, unlike ResNet); DRN-C then has residual blocks at levels
1-2 and 7-8, DRN-D plain conv-BN-ReLU layers there.

Segmentation (DRNSeg): a 1×1 conv maps the last features (always 512 channels:
levels 7-8 take the 2048 channels of a bottleneck level 6 down to 512) to
class scores at stride 8, and a grouped 16×16, stride-8 transposed conv that
is fixed bilinear interpolation upsamples them. The official code freezes it
(``requires_grad = False``); we do too, and keep it as a buffer. It produces
8·⌈H/8⌉ rows, so we crop to the input size, which makes any H, W work (the
official code assumes multiples of 8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import Pretrained, load_pretrained
from semseg.models._blocks import bilinear_kernel
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.31
CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)  # levels 1-8 (paper Fig. 1, drn.py)
STRIDES = (1, 2, 2, 2, 1, 1, 1, 1)  # output stride 2·2·2 = 8
DILATIONS = (1, 1, 1, 1, 2, 4, 2, 1)  # levels 5-6 replace strides; 7-8 degrid (paper §3-4)
_URL = "http://dl.yf.io/drn/"  # official ImageNet weights: fyu/drn drn.py webroot (since 2019; was tigress-web)


class BasicBlock(nn.Module):
    """Two 3×3 convs; ``residual=False`` drops the identity (DRN-C levels 7-8)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, residual: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = _shortcut(inplanes, planes, stride) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride, dilation) → 1×1 ×4, as torchvision's ResNet v1.5 (DRN-D-54/105)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Sequential | None:
    """1×1 conv + BN projection where the shape changes, else identity (None)."""
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))


def _conv_layers(inplanes: int, planes: int, convs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """``convs`` × (3×3 conv → BN → ReLU), the first one strided: DRN-D's non-residual levels."""
    modules: list[nn.Module] = []
    for i in range(convs):
        cin, s = (inplanes, stride) if i == 0 else (planes, 1)
        modules += [
            nn.Conv2d(cin, planes, 3, s, dilation, dilation, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*modules)


@dataclass(frozen=True)
class DRNSpec:
    """One row of the paper's Table/Fig. 2: architecture letter, block type, blocks per level 1-8."""

    arch: str  # "C" or "D"
    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int, int, int, int, int]
    weights_file: str


def _level(spec: DRNSpec, level: int, blocks: int, inplanes: int) -> tuple[nn.Sequential, int]:
    """Level ``level`` (1-8) of ``spec`` and its output channel count.

    DRN-D: levels 1-2 and 7-8 are plain conv layers. DRN-C: they are basic blocks,
    residual in levels 1-2 and without identity in the degridding levels 7-8 (§4.2).
    Levels 3-6 use the spec's block (basic or bottleneck) in both.
    """
    planes, stride, dilation = CHANNELS[level - 1], STRIDES[level - 1], DILATIONS[level - 1]
    ends = level in (1, 2, 7, 8)
    if spec.arch == "D" and ends:
        return _conv_layers(inplanes, planes, blocks, stride, dilation), planes
    outplanes = planes * (1 if ends else spec.block.expansion)
    units: list[nn.Module] = []
    for i in range(blocks):
        cin, s = (inplanes, stride) if i == 0 else (outplanes, 1)
        if ends:
            units.append(BasicBlock(cin, planes, s, dilation, residual=level <= 2))
        else:
            units.append(spec.block(cin, planes, s, dilation))
    return nn.Sequential(*units), outplanes


class DRN(nn.Module):
    """The DRN trunk (no classifier): stride 8, 512 output channels.

    Module names (``conv1``/``bn1`` or ``layer0``, ``layer1``…``layer8``) follow the
    official ``drn.py``, so its ImageNet state dicts load unchanged (``fc`` is ignored).
    """

    out_channels = CHANNELS[-1]

    def __init__(self, spec: DRNSpec) -> None:
        super().__init__()
        self.arch = spec.arch
        if spec.arch == "C":
            self.conv1 = nn.Conv2d(3, CHANNELS[0], 7, 1, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(CHANNELS[0])
            self.relu = nn.ReLU(inplace=True)
        else:
            self.layer0 = nn.Sequential(  # the same 7×7 stem, as one conv-BN-ReLU unit
                nn.Conv2d(3, CHANNELS[0], 7, 1, 3, bias=False), nn.BatchNorm2d(CHANNELS[0]), nn.ReLU(inplace=True)
            )
        inplanes = CHANNELS[0]
        for level, blocks in enumerate(spec.layers, start=1):
            layer, inplanes = _level(spec, level, blocks, inplanes)
            setattr(self, f"layer{level}", layer)
        for m in self.modules():  # official init: He normal (fan-out), BN = identity
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x))) if self.arch == "C" else self.layer0(x)
        for level in range(1, 9):
            x = getattr(self, f"layer{level}")(x)
        return x


@dataclass(frozen=True)
class _OfficialWeights:
    """Stands in for a torchvision weights enum in ``load_pretrained`` (url + get_state_dict)."""

    url: str

    def get_state_dict(self, progress: bool = False) -> dict[str, torch.Tensor]:
        return torch.hub.load_state_dict_from_url(self.url, map_location="cpu", progress=progress)

    def __str__(self) -> str:
        return self.url


class DRNSeg(nn.Module):
    """DRN trunk → 1×1 conv to class scores (stride 8) → fixed bilinear ×8 upsampling → crop."""

    def __init__(self, spec: DRNSpec, num_classes: int, pretrained_backbone: Pretrained = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"model.params.num_classes: must be ≥ 1, got {num_classes}")
        self.base = DRN(spec)
        load_pretrained(self.base, pretrained_backbone, _OfficialWeights(_URL + spec.weights_file))
        self.seg = nn.Conv2d(DRN.out_channels, num_classes, 1)
        nn.init.normal_(self.seg.weight, 0.0, (2.0 / num_classes) ** 0.5)  # as DRNSeg: std √(2/(k·k·out))
        nn.init.zeros_(self.seg.bias)
        kernel = bilinear_kernel(1, 1, 16).expand(num_classes, 1, 16, 16)
        self.register_buffer("up_kernel", kernel.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = self.seg(self.base(x))
        # k16, s8, p4: n coarse pixels → 8n fine ones, coarse pixel i centred at 8i + 3.5 (as
        # align_corners=False); 8n ≥ H since n = ⌈H/8⌉, so cropping the bottom/right rows is exact.
        up = F.conv_transpose2d(scores, self.up_kernel, stride=8, padding=4, groups=scores.shape[1])
        return {"out": up[..., : x.shape[-2], : x.shape[-1]]}


SPECS: dict[str, DRNSpec] = {
    "drn_c_26": DRNSpec("C", BasicBlock, (1, 1, 2, 2, 2, 2, 1, 1), "drn_c_26-ddedf421.pth"),
    "drn_c_42": DRNSpec("C", BasicBlock, (1, 1, 3, 4, 6, 3, 1, 1), "drn_c_42-9d336e8c.pth"),
    "drn_d_22": DRNSpec("D", BasicBlock, (1, 1, 2, 2, 2, 2, 1, 1), "drn_d_22-4bd2f8ea.pth"),
    "drn_d_38": DRNSpec("D", BasicBlock, (1, 1, 3, 4, 6, 3, 1, 1), "drn_d_38-eebb45f0.pth"),
    "drn_d_54": DRNSpec("D", Bottleneck, (1, 1, 3, 4, 6, 3, 1, 1), "drn_d_54-0e0534ff.pth"),
    "drn_d_105": DRNSpec("D", Bottleneck, (1, 1, 3, 4, 23, 3, 1, 1), "drn_d_105-12b40979.pth"),
}

# Parameter counts: the fyu/drn README lists the ImageNet classifiers (Params column, rounded
# to 0.1M, so the default 1 % tolerance covers the rounding). DRNSeg with num_classes=1000 has
# exactly the classifier's parameters: its 1×1 seg conv (512·1000 + 1000) is the same shape as
# the classifier's 1×1-conv fc, and the upsampler is a buffer. (The README's segmentation table
# repeats these classifier figures; at 19 Cityscapes classes the seg nets are 0.5M smaller.)
_SOURCE = ("Yu et al. 2017, arXiv:1705.09914; params from the fyu/drn README ImageNet table "
           "(the classifier = DRNSeg at 1000 classes)")
_IMAGENET = {"num_classes": 1000}


def _build(name: str, num_classes: int, pretrained_backbone: Pretrained) -> DRNSeg:
    return DRNSeg(SPECS[name], num_classes, pretrained_backbone)


@MODELS.register("drn_c_26", paper_params=21.1e6, paper_kwargs=_IMAGENET, output_stride=8, source=_SOURCE)
def drn_c_26(*, num_classes: int, pretrained_backbone: Pretrained = False) -> DRNSeg:
    """DRN-C-26: ResNet-18 layout, 7×7 stem + basic blocks, degridding levels 7-8."""
    return _build("drn_c_26", num_classes, pretrained_backbone)


@MODELS.register("drn_c_42", paper_params=31.2e6, paper_kwargs=_IMAGENET, output_stride=8, source=_SOURCE)
def drn_c_42(*, num_classes: int, pretrained_backbone: Pretrained = False) -> DRNSeg:
    """DRN-C-42: ResNet-34 layout (3, 4, 6, 3 blocks in levels 3-6)."""
    return _build("drn_c_42", num_classes, pretrained_backbone)


@MODELS.register("drn_d_22", paper_params=16.4e6, paper_kwargs=_IMAGENET, output_stride=8, source=_SOURCE)
def drn_d_22(*, num_classes: int, pretrained_backbone: Pretrained = False) -> DRNSeg:
    """DRN-D-22: DRN-C-26 with plain conv layers instead of residual blocks in levels 1-2 and 7-8."""
    return _build("drn_d_22", num_classes, pretrained_backbone)


@MODELS.register("drn_d_38", paper_params=26.5e6, paper_kwargs=_IMAGENET, output_stride=8, source=_SOURCE)
def drn_d_38(*, num_classes: int, pretrained_backbone: Pretrained = False) -> DRNSeg:
    """DRN-D-38: the DRN-D form of DRN-C-42."""
    return _build("drn_d_38", num_classes, pretrained_backbone)


@MODELS.register("drn_d_54", paper_params=35.8e6, paper_kwargs=_IMAGENET, output_stride=8, source=_SOURCE)
def drn_d_54(*, num_classes: int, pretrained_backbone: Pretrained = False) -> DRNSeg:
    """DRN-D-54: bottleneck blocks in levels 3-6 (ResNet-50 layout)."""
    return _build("drn_d_54", num_classes, pretrained_backbone)


@MODELS.register("drn_d_105", paper_params=54.8e6, paper_kwargs=_IMAGENET, output_stride=8, source=_SOURCE)
def drn_d_105(*, num_classes: int, pretrained_backbone: Pretrained = False) -> DRNSeg:
    """DRN-D-105: bottleneck blocks, ResNet-101 layout (23 blocks in level 5)."""
    return _build("drn_d_105", num_classes, pretrained_backbone)
