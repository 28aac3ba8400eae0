"""ENet: a deep neural network architecture for real-time semantic segmentation.

Paszke, Chaurasia, Kim and Culurciello, 2016 (arXiv:1606.02147). Layer table
from the paper's Table 1, block details (which convolutions are projections,
per-channel PReLU, where spatial dropout sits, 2×2 final full convolution) from
the authors' Torch code (e-lab/ENet-training, ``models/encoder.lua`` and
``models/decoder.lua``).

ENet spends its parameters in a large encoder that works at 1/8 resolution and
keeps a small decoder that only upsamples: the paper's argument is that early
downsampling is cheap and that the decoder merely refines the encoder's output.
Every block is a ResNet-style bottleneck (1×1 projection, main convolution, 1×1
expansion) added to a shortcut; downsampling shortcuts max-pool and remember the
indices, which the decoder's shortcuts use to max-unpool.

Changes from the paper, all for arbitrary input sizes or documented in
doc/enet.md: max-pools use ``ceil_mode=True`` and the 2×2 stride-2 projection
sees its input zero-padded to an even size, so both branches of a downsampling
block agree for odd sizes; unpooling and transposed convolutions are given the
encoder's sizes (``output_size``) and the final 2×2 full convolution is cropped
to the input. Convolutions followed by BatchNorm have no bias (BN cancels it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.31
PROJECTION_RATIO = 4  # internal channels = output channels / 4 (paper §3, Torch code)


def _bn_prelu(channels: int) -> list[nn.Module]:
    # eps 1e-3 as the authors' SpatialBatchNormalization; one PReLU slope per channel (paper §4).
    return [nn.BatchNorm2d(channels, eps=1e-3), nn.PReLU(channels)]


class InitialBlock(nn.Module):
    """13 3×3 stride-2 convolutions concatenated with a 2×2 max-pool of the RGB input → 16 maps (Fig. 2a)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)  # ceil: same ⌈H/2⌉ as the padded conv
        self.act = nn.Sequential(*_bn_prelu(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(torch.cat([self.conv(x), self.pool(x)], dim=1))


class Bottleneck(nn.Module):
    """Encoder bottleneck (Fig. 2b): regular, dilated, asymmetric or downsampling.

    The main convolution is 3×3 (``dilation`` > 1 for dilated blocks) or, with
    ``asymmetric=k``, a 1×k followed by a k×1 — a k×k receptive field for 2k
    weights per channel pair; the order is the authors' (e-lab/ENet-training
    ``encoder.lua``: ``SpatialConvolution(.., k, 1, ..)`` is kW=k, kH=1, then 1, k), so
    their weights port one to one. A downsampling block replaces the first 1×1
    projection by a 2×2 stride-2 convolution and max-pools its shortcut,
    zero-padding the extra channels (paper: "information-preserving").
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dropout: float,
        dilation: int = 1,
        asymmetric: int = 0,
        downsample: bool = False,
    ) -> None:
        super().__init__()
        internal = out_channels // PROJECTION_RATIO
        self.downsample = downsample
        self.extra_channels = out_channels - in_channels
        stride = 2 if downsample else 1
        if asymmetric:
            pad = (asymmetric - 1) // 2
            main = [
                nn.Conv2d(internal, internal, (1, asymmetric), padding=(0, pad), bias=False),  # width first,
                nn.Conv2d(internal, internal, (asymmetric, 1), padding=(pad, 0), bias=False),  # as the authors' code
            ]
        else:
            main = [nn.Conv2d(internal, internal, 3, padding=dilation, dilation=dilation, bias=False)]
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, internal, stride, stride=stride, bias=False),
            *_bn_prelu(internal),
            *main,
            *_bn_prelu(internal),
            nn.Conv2d(internal, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-3),
            nn.Dropout2d(dropout),  # spatial dropout, right before the addition (paper §3)
        )
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True) if downsample else None
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the block's output and, for downsampling blocks, the pooling indices."""
        indices = None
        shortcut = x
        if self.pool is not None:
            shortcut, indices = self.pool(x)
            # pad odd sizes so the 2×2 stride-2 projection also gives ⌈H/2⌉×⌈W/2⌉
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
        return self.act(self.branch(x) + shortcut), indices


class UpsamplingBottleneck(nn.Module):
    """Decoder bottleneck that doubles the resolution (paper §3, Table 1 stage 4.0/5.0).

    The shortcut is a bias-free 1×1 convolution (replacing the encoder's channel
    padding) followed by max-unpooling with the indices of the matching encoder
    pool; the branch's main convolution is a 3×3 stride-2 full convolution.
    Both are told the encoder's size, so odd sizes come back exactly.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        internal = out_channels // PROJECTION_RATIO
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels, eps=1e-3)
        )
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, internal, 1, bias=False), *_bn_prelu(internal))
        self.up = nn.ConvTranspose2d(internal, internal, 3, stride=2, padding=1, bias=False)
        self.expand = nn.Sequential(
            *_bn_prelu(internal),
            nn.Conv2d(internal, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-3),
            nn.Dropout2d(dropout),
        )
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
        shortcut = self.unpool(self.shortcut(x), indices, output_size=size)
        branch = self.expand(self.up(self.reduce(x), output_size=size))
        return self.act(branch + shortcut)


class ENet(nn.Module):
    """ENet as in the paper's Table 1; ``forward`` returns ``{"out": logits at the input size}``.

    Stage 1 uses spatial dropout ``dropout_stage1`` (paper: 0.01), stages 2–5
    use ``dropout`` (paper: 0.1 "afterwards").
    """

    def __init__(self, num_classes: int, dropout: float = 0.1, dropout_stage1: float = 0.01) -> None:
        super().__init__()
        self.initial = InitialBlock(3, 16)
        self.down1 = Bottleneck(16, 64, dropout_stage1, downsample=True)  # bottleneck1.0
        self.stage1 = nn.ModuleList(Bottleneck(64, 64, dropout_stage1) for _ in range(4))  # 1.1–1.4
        self.down2 = Bottleneck(64, 128, dropout, downsample=True)  # bottleneck2.0
        # bottleneck2.1–2.8, then stage 3 repeats them without the downsampling block (Table 1)
        self.stage23 = nn.ModuleList(self._stage(dropout) + self._stage(dropout))
        self.up4 = UpsamplingBottleneck(128, 64, dropout)  # bottleneck4.0
        self.stage4 = nn.ModuleList(Bottleneck(64, 64, dropout) for _ in range(2))  # 4.1–4.2
        self.up5 = UpsamplingBottleneck(64, 16, dropout)  # bottleneck5.0
        self.stage5 = Bottleneck(16, 16, dropout)  # 5.1
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 2, stride=2)  # 2×2, as the authors' code

    @staticmethod
    def _stage(dropout: float) -> list[Bottleneck]:
        """One pass of x.1–x.8: regular, dil. 2, asym. 5, dil. 4, regular, dil. 8, asym. 5, dil. 16."""
        kinds = [{}, {"dilation": 2}, {"asymmetric": 5}, {"dilation": 4},
                 {}, {"dilation": 8}, {"asymmetric": 5}, {"dilation": 16}]  # fmt: skip
        return [Bottleneck(128, 128, dropout, **kind) for kind in kinds]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Size]]]:
        """Stages 1–3: features at 1/8 resolution and the (indices, pre-pool size) of both pools."""
        x = self.initial(x)
        pools = []
        for down, blocks in ((self.down1, self.stage1), (self.down2, self.stage23)):
            size = x.shape[-2:]
            x, indices = down(x)
            pools.append((indices, size))
            for block in blocks:
                x, _ = block(x)
        return x, pools

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        x, ((indices1, size1), (indices2, size2)) = self.encode(x)
        x = self.up4(x, indices2, size2)
        for block in self.stage4:
            x, _ = block(x)
        x, _ = self.stage5(self.up5(x, indices1, size1))
        # the initial block's stride-2 output is ⌈H/2⌉; the 2×2 full conv gives 2⌈H/2⌉ ≥ H
        return {"out": self.fullconv(x)[..., :height, :width]}


def _check_dropout(name: str, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"model.params.{name}: {p} is not a probability in [0, 1) for enet")


# Table 3 gives 0.37M, rounded to 0.01M (±1.35 %). The architecture as described has 363,499 trainable
# parameters at 12 classes (1.8 % below); adding BatchNorm running statistics, which some frameworks
# count, gives 371,851 ≈ 0.37M. We keep the paper's architecture and allow 2 %; exact counts are
# pinned in tests/test_models_enet.py.
@MODELS.register(
    "enet",
    paper_params=0.37e6,
    paper_kwargs={"num_classes": 12},
    output_stride=8,
    params_tolerance=0.02,
    paper_camvid_miou=(51.3, "Paszke et al. 2016, Table 5 (test split)"),
    source="Paszke et al. 2016, arXiv:1606.02147, Table 3 (CamVid: 11 classes + void)",
)
def enet(*, num_classes: int, dropout: float = 0.1, dropout_stage1: float = 0.01) -> ENet:
    """ENet (Paszke et al. 2016); ``dropout`` is the spatial-dropout rate after stage 1."""
    _check_dropout("dropout", dropout)
    _check_dropout("dropout_stage1", dropout_stage1)
    return ENet(num_classes, dropout=dropout, dropout_stage1=dropout_stage1)
