"""FRRN: Full-Resolution Residual Networks for semantic segmentation in street scenes.

Pohlen, Hermans, Mathias and Leibe, CVPR 2017 (arXiv:1611.08323). Layouts from the paper's
Table 1 (FRRN A, and FRRN B's extra 1/32 level); unit details (which convolutions carry BatchNorm
or a bias, the residual stream's 1×1 + BN start, nearest-neighbour unpooling of the residuals,
bilinear ×2 upsampling of the pooling stream, a projection RU after the merge) from the authors'
Theano/Lasagne code (TobyPDE/FRRN, ``dltools/architectures.py``, constants in ``train.py``).

An FRRN runs two streams side by side. The *residual stream* stays at the full image resolution
with only 32 channels and is changed by additions alone, like the identity path of a ResNet; the
*pooling stream* goes down to 1/16 (FRRN A) or 1/32 (FRRN B) and back up, like a U-Net without
skips. They meet in every full-resolution residual unit (FRRU): the residual stream is max-pooled
to the pooling stream's size and concatenated with it, two 3×3 conv + BN + ReLU give the new
pooling stream, and a 1×1 conv of that, unpooled back to full resolution, is added to the
residual stream. Recognition comes from the pooling stream, boundaries from the full-resolution
one, and the network trains from scratch (no ImageNet pre-training).

Changes, all for arbitrary input sizes (the authors' graph needs H, W divisible by 16 or 32):
max-pools use ``ceil_mode=True``, so the pooling stream at level n is ⌈H/2ⁿ⌉ — the same size the
residual stream's 2ⁿ×2ⁿ pool gives — and each unpooling or ×2 upsampling is cropped to the size
it returns to. At multiples of 16 (32) nothing is cropped and the graph is the authors'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.90

BN_EPS = 1e-4  # lasagne.layers.BatchNormLayer's default epsilon, which the authors' layers.py keeps
BASE_CHANNELS = 48  # the 5×5 conv and the full-resolution RUs (Table 1; train.py BASE_CHANNELS)
LANES = 32  # residual-stream width (Table 1; train.py FR_CHANNELS)
STEM_UNITS = HEAD_UNITS = 3  # RUs before the split and after the merge (Table 1)
# Table 1, one (level n: the pooling stream at 1/2ⁿ, channel multiplier of BASE_CHANNELS, FRRUs) per stage;
# the authors' code: channels = 48 · multiplier, i.e. 96, 192, 384, 384 (384 at 1/32) down and 192, 192, 96 up.
FRRN_A_ENCODER = ((1, 2, 3), (2, 4, 4), (3, 8, 2), (4, 8, 2))
FRRN_A_DECODER = ((3, 4, 2), (2, 4, 2), (1, 2, 2))
FRRN_B_ENCODER = FRRN_A_ENCODER + ((5, 8, 2),)  # FRRN B: one more pooling level, 1/32
FRRN_B_DECODER = ((4, 4, 2),) + FRRN_A_DECODER

Layout = tuple[tuple[int, int, int], ...]


def he_uniform(conv: nn.Conv2d, relu: bool) -> nn.Conv2d:
    """The authors' init: Lasagne HeUniform, gain √2 before a ReLU and 1 otherwise; biases 0."""
    nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu" if relu else "linear")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, relu: bool = True) -> nn.Sequential:
    """Conv (no bias) → BN (eps 1e-4) → optional ReLU: the authors' ``add_conv`` with batch_norm=True."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    layers: list[nn.Module] = [he_uniform(conv, relu), nn.BatchNorm2d(out_channels, eps=BN_EPS)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualUnit(nn.Module):
    """RU: 3×3 conv-BN-ReLU, 3×3 conv-BN, added to the input (1×1 projection when the width changes).

    As the authors' ``add_ru``: no ReLU after the sum, and the projection is a bare 1×1 conv.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(conv_bn(in_channels, out_channels, 3), conv_bn(out_channels, out_channels, 3, False))
        self.project = None
        if in_channels != out_channels:
            self.project = he_uniform(nn.Conv2d(in_channels, out_channels, 1, bias=False), relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.project is None else self.project(x)
        return self.branch(x) + shortcut


def unpool(x: torch.Tensor, factor: int, size: torch.Size) -> torch.Tensor:
    """Nearest-neighbour ×``factor`` (Lasagne's Upscale2DLayer: each value repeated), cropped to ``size``."""
    if factor == 1:
        return x
    return F.interpolate(x, scale_factor=factor, mode="nearest")[..., : size[0], : size[1]]


def upsample2(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """The pooling stream's bilinear ×2 (the authors' BilinearUpscaleLayer), cropped to ``size``."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)[..., : size[0], : size[1]]


class FRRU(nn.Module):
    """Full-resolution residual unit at pooling factor ``scale`` (Fig. 3): ``(y, z) → (y', z')``.

    y' = two 3×3 conv-BN-ReLU of [y, max-pool_scale(z)] (``channels`` maps, at y's size);
    z' = z + unpool_scale(1×1 conv of y', with bias, to ``lanes`` maps), at z's full resolution.
    """

    def __init__(self, in_channels: int, channels: int, lanes: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.convs = nn.Sequential(conv_bn(in_channels + lanes, channels, 3), conv_bn(channels, channels, 3))
        self.to_residual = he_uniform(nn.Conv2d(channels, lanes, 1), relu=False)

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = F.max_pool2d(z, self.scale, self.scale, ceil_mode=True) if self.scale > 1 else z
        y = self.convs(torch.cat([y, pooled], dim=1))
        return y, z + unpool(self.to_residual(y), self.scale, z.shape[-2:])


class Stage(nn.Module):
    """The FRRUs at one level of the pooling stream (1/2ⁿ), entered by a 2×2 max-pool or a bilinear ×2."""

    def __init__(self, level: int, in_channels: int, channels: int, units: int, lanes: int) -> None:
        super().__init__()
        self.level = level
        ins = [in_channels] + [channels] * (units - 1)
        self.units = nn.ModuleList(FRRU(c, channels, lanes, 2**level) for c in ins)

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for unit in self.units:
            y, z = unit(y, z)
        return y, z


class FRRN(nn.Module):
    """FRRN A or B from its encoder/decoder layouts; ``forward`` returns ``{"out": logits at the input size}``."""

    def __init__(self, num_classes: int, encoder: Layout, decoder: Layout,
                 base_channels: int = BASE_CHANNELS, lanes: int = LANES) -> None:
        super().__init__()
        b = base_channels
        self.stem = nn.Sequential(conv_bn(3, b, 5), *(ResidualUnit(b, b) for _ in range(STEM_UNITS)))
        self.split = conv_bn(b, lanes, 1, relu=False)  # the residual stream starts: 1×1 conv + BN, no ReLU
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        channels = b
        for stages, layout in ((self.encoder, encoder), (self.decoder, decoder)):
            for level, multiplier, units in layout:
                stages.append(Stage(level, channels, b * multiplier, units, lanes))
                channels = b * multiplier
        self.head = nn.Sequential(ResidualUnit(channels + lanes, b), *(ResidualUnit(b, b) for _ in range(HEAD_UNITS - 1)))
        self.classifier = he_uniform(nn.Conv2d(b, num_classes, 1), relu=False)

    def streams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooling stream back at full resolution, residual stream): the two inputs of the merge."""
        y = self.stem(x)
        z = self.split(y)
        sizes = [y.shape[-2:]]  # sizes[n]: the pooling stream's size at 1/2ⁿ
        for stage in self.encoder:
            y = F.max_pool2d(y, 2, 2, ceil_mode=True)
            sizes.append(y.shape[-2:])
            y, z = stage(y, z)
        for stage in self.decoder:
            y, z = stage(upsample2(y, sizes[stage.level]), z)
        return upsample2(y, sizes[0]), z

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y, z = self.streams(x)
        return {"out": self.classifier(self.head(torch.cat([y, z], dim=1)))}


def _check(base_channels: int, lanes: int, name: str) -> None:
    for key, value in (("base_channels", base_channels), ("lanes", lanes)):
        if value < 1:
            raise ConfigError(f"model.params.{key}: {value} is not a positive number of channels for {name}")


# The paper gives 17.7M and 24.8M. Ours build the authors' layers at their Cityscapes setting (train.py:
# 19 classes, base 48, lanes 32): 17,746,803 and 24,755,699 trainable parameters, 0.26 % and 0.18 % from
# the rounded figures (plus 15,520 and 20,128 BN running statistics, which Lasagne also stores; with them
# the counts still round to 17.8M and 24.8M). Exact counts pinned in tests/test_models_frrn.py.
_CITYSCAPES = {"num_classes": 19}  # the paper's benchmark and the authors' train.py NUM_CLASSES
_SOURCE = ("Pohlen et al. 2017, arXiv:1611.08323 (17.7M / 24.8M, Cityscapes test comparison); "
           "Table 1 layout; the authors' TobyPDE/FRRN builders")
_FRRN_B_RESULT = "Pohlen et al. 2017, abstract (Cityscapes test, class IoU; FRRN B on 1024×512, no pre-training)"


@MODELS.register("frrn_a", paper_params=17.7e6, paper_kwargs=_CITYSCAPES, output_stride=16, source=_SOURCE)
def frrn_a(*, num_classes: int, base_channels: int = BASE_CHANNELS, lanes: int = LANES) -> FRRN:
    """FRRN A: pooling stream down to 1/16 (the paper trains it on quarter-resolution Cityscapes, 512×256)."""
    _check(base_channels, lanes, "frrn_a")
    return FRRN(num_classes, FRRN_A_ENCODER, FRRN_A_DECODER, base_channels, lanes)


@MODELS.register("frrn_b", paper_params=24.8e6, paper_kwargs=_CITYSCAPES, output_stride=32, source=_SOURCE,
                 paper_cityscapes_miou=(71.8, _FRRN_B_RESULT))
def frrn_b(*, num_classes: int, base_channels: int = BASE_CHANNELS, lanes: int = LANES) -> FRRN:
    """FRRN B: one more pooling level, 1/32, for the half-resolution (1024×512) Cityscapes frames."""
    _check(base_channels, lanes, "frrn_b")
    return FRRN(num_classes, FRRN_B_ENCODER, FRRN_B_DECODER, base_channels, lanes)
