"""U-Net: a contracting path and a symmetric expanding path joined by copy-and-crop skips.

Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015 (arXiv:1505.04597), §2 and Fig. 1. Where the paper leaves a detail
open, the authors' Caffe release (u-net-release-2015-10-02, ``phseg_v5-train.prototxt``; layer
names such as ``upconv_d4c_u3a`` and ``dropout_d4c``) decides, as read from ports of that release.
The release ships as a tarball on the authors' site, not as a repository.

Contracting path: five levels of two 3×3 convolutions + ReLU with 64, 128, 256, 512 and 1024
channels, and a 2×2 stride-2 max-pool between levels. Expanding path: at each level a 2×2
"up-convolution" (stride 2, half the channels, followed by a ReLU in the release), a concatenation
with the contracting path's map of that level (centre-cropped to the same size), and two
3×3 convolutions + ReLU. A 1×1 convolution gives the class scores (23 convolutions in all). Dropout 0.5
ends the contracting path ("drop-out layers at the end of the contracting path", §3.1). The release
places it after the 512- and 1024-channel levels. No BatchNorm (``batch_norm`` adds it, off by default).

The paper's convolutions are unpadded ("valid"), so each one loses a pixel per side at its level.
A 572×572 tile gives a 388×388 map. The paper's overlap-tile strategy (Fig. 2) predicts the
whole image by mirroring it at the borders. ``padding=False`` does exactly that: it mirrors
:data:`VALID_BORDER` = 92 pixels per side (more at the bottom/right, up to the next tile size
where every 2×2 pool sees an even size, §2), then crops the valid output back to the image.
``padding=True`` (the default) pads every 3×3 convolution instead, which is the common modern
choice. The output is then as large as the input at multiples of 16, and other sizes are mirrored
up to the next multiple of 16 and cropped back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 2.20

CHANNELS = (64, 128, 256, 512, 1024)  # Fig. 1: one level per width; ×2 after each pool
DROPOUT = 0.5  # §3.1; the release's dropout_d3c and dropout_d4c (ratio 0.5)
DROPOUT_LEVELS = (3, 4)  # the release: after the 512-channel (d3) and the 1024-channel (d4) level
POOLS = len(CHANNELS) - 1  # 4: a padded U-Net needs H and W divisible by 2**4 = 16
# The context the valid convolutions eat, per side: two 3×3 convs per level at scale 2**level on the way down
# (1 + 2 + 4 + 8 + 16 pixels × 2) and up (8 + 4 + 2 + 1 × 2): 92 = (572 - 388) / 2, the paper's tile (Fig. 2).
VALID_BORDER = 92


def valid_output_size(tile: int) -> int:
    """Output side of the valid (``padding=False``) U-Net for an input side ``tile`` (572 → 388).

    A tile must be 16k + 60 with k ≥ 8: then every 2×2 pool sees an even side (§2) and something is left
    (188 → 4); other sides are a :class:`ConfigError`."""
    k, rest = divmod(tile - 60, 2**POOLS)
    if rest or k < 8:
        raise ConfigError(f"a valid U-Net tile side must be 16k + 60 with k >= 8 (188, 204, …, 572, …), got {tile}")
    return tile - 2 * VALID_BORDER


def valid_tile_size(side: int) -> int:
    """The smallest valid tile whose output covers ``side`` pixels (388 → 572, 360 → 556)."""
    k = max(8, math.ceil((side + 2 * VALID_BORDER - 60) / 2**POOLS))
    return 2**POOLS * k + 60


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Mirror ``x`` at its borders by any number of pixels, as the overlap-tile strategy (Fig. 2).

    ``F.pad(mode="reflect")`` needs each pad to be smaller than the side, so wide pads go in rounds
    (each reflects the previous result, numpy's ``reflect`` mode). A side of one pixel is replicated."""
    if min(x.shape[-2:]) == 1:
        return F.pad(x, (left, right, top, bottom), mode="replicate")
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return x


def center_crop(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The middle ``size`` of ``x``: the copy-and-crop of a skip map (the paper's "cropping", Fig. 1)."""
    top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


class DoubleConv(nn.Sequential):
    """Two 3×3 convolutions, each (→ BatchNorm) → ReLU; unpadded as the paper unless ``padding``."""

    def __init__(self, in_channels: int, out_channels: int, padding: bool, batch_norm: bool) -> None:
        layers: list[nn.Module] = []
        for cin in (in_channels, out_channels):
            layers.append(nn.Conv2d(cin, out_channels, 3, padding=int(padding), bias=not batch_norm))
            layers += [nn.BatchNorm2d(out_channels)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Up(nn.Module):
    """2×2 up-convolution (stride 2, half the channels) + ReLU, concat with the cropped skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, padding: bool, batch_norm: bool) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels, padding, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.up(x))
        # the release's order: up-sampled maps first, then the cropped copy (concat_d3cc_u3a-b)
        return self.conv(torch.cat([x, center_crop(skip, x.shape[-2:])], dim=1))


class UNet(nn.Module):
    """Contracting path (4 pools) → expanding path (4 up-convolutions with skips) → 1×1 classifier."""

    def __init__(self, num_classes: int, padding: bool = True, batch_norm: bool = False, dropout: float = DROPOUT,
                 base_channels: int = CHANNELS[0]) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(POOLS + 1)]
        self.padding = padding
        self.down = nn.ModuleList(DoubleConv(cin, cout, padding, batch_norm)
                                  for cin, cout in zip([3, *widths[:-1]], widths))
        self.drop = nn.ModuleDict({str(i): nn.Dropout(dropout) for i in DROPOUT_LEVELS})
        self.pool = nn.MaxPool2d(2, 2)
        self.up = nn.ModuleList(Up(cin, cout, padding, batch_norm) for cin, cout in zip(widths[:0:-1], widths[-2::-1]))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)
        _init_he(self)

    def tile(self, x: torch.Tensor) -> torch.Tensor:
        """Mirror ``x`` to a size the net takes whole, so that output pixel (0, 0) is the image's first pixel.

        Padded: up to the next multiple of 16 at the bottom/right. Valid: 92 pixels on the top/left, and at
        the bottom/right 92 plus what makes the side a valid tile (``valid_tile_size``)."""
        h, w = x.shape[-2:]
        if self.padding:
            return mirror_pad(x, 0, -h % 2**POOLS, 0, -w % 2**POOLS)
        b = VALID_BORDER
        return mirror_pad(x, b, valid_tile_size(h) - h - b, b, valid_tile_size(w) - w - b)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The net on a tile it takes whole: 64-channel maps before the classifier (valid: tile − 184)."""
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if str(level) in self.drop:
                x = self.drop[str(level)](x)
            if level < POOLS:
                skips.append(x)
                x = self.pool(x)
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)
        return x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        out = self.classifier(self.features(self.tile(x)))
        return {"out": out[..., :h, :w]}


def _init_he(model: nn.Module) -> None:
    """§3: Gaussian weights with std sqrt(2/N), N the incoming nodes of one neuron (k·k·C_in for a conv;
    C_in for the stride-2 2×2 up-convolution, whose outputs each see one input pixel); zero biases."""
    for m in model.modules():
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / m.in_channels))
        elif isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1])))
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# The paper gives no parameter count; derived from Fig. 1's layer sizes with a 3-channel input and the
# figure's 2 classes: 18 3×3 convs 28,245,440 + 4 up-convs 2,786,240 + 1×1 classifier 130 = 31,031,810
# (with the figure's 1 input channel: 31,030,658). Ports of the release report 31,100,354 for it with one
# input channel: its last up-convolution keeps 128 channels (→ a 192-channel concat) where the figure
# halves to 64; we follow the figure. Exact counts are pinned in tests/test_models_unet.py.
@MODELS.register("unet", paper_params=31_031_810.0, paper_kwargs={"num_classes": 2}, output_stride=16,
                 source="Ronneberger et al. 2015, arXiv:1505.04597, Fig. 1 (count derived from the layer sizes; "
                        "paper gives none)")
def unet(*, num_classes: int, padding: bool = True, batch_norm: bool = False, dropout: float = DROPOUT,
         base_channels: int = CHANNELS[0]) -> UNet:
    """U-Net (Fig. 1). ``padding``: padded 3×3 convs (True) or the paper's valid ones with overlap-tile
    mirroring (False); ``batch_norm``: BN after each 3×3 conv (not in the paper); ``base_channels``: the first
    level's width (64; each level doubles it)."""
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.params.dropout: {dropout} is not a probability in [0, 1) for unet")
    if base_channels < 1:
        raise ConfigError(f"model.params.base_channels: must be at least 1, got {base_channels}")
    return UNet(num_classes, padding, batch_norm, dropout, base_channels)
