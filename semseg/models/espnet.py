"""ESPNet-C and ESPNet: efficient spatial pyramids of dilated convolutions.

Mehta, Rastegari, Caspi, Shapiro and Hajishirzi, "ESPNet: Efficient Spatial Pyramid of
Dilated Convolutions for Semantic Segmentation", ECCV 2018 (arXiv:1803.06815); layer sizes
from the authors' code (sacmehta/ESPNet ``train/Model.py``).

The ESP module (§3.1) *reduces* the input with a 1×1 conv to N/K channels (K = 5), *splits*
the work into K parallel 3×3 convs with dilation 1, 2, 4, 8, 16, and *merges* them by
concatenation. Concatenating dilated outputs directly makes gridding artefacts, so the merge
is a hierarchical feature fusion (HFF): the outputs at rates 2, 4, 8, 16 are summed
cumulatively (d2, d2+d4, d2+d4+d8, …) before the concat. A residual connection, BN and
PReLU follow. The strided variant (reduce with a 3×3 stride-2 conv, no residual) downsamples.

ESPNet-C (§3.2, Fig. 4c) stacks them at 1/2, 1/4 and 1/8, re-injecting the image average-pooled
to 1/2 and 1/4; α2 = p = 2 and α3 = q = 8 modules at 1/4 and 1/8 (the released models).
ESPNet (Fig. 4d) adds a light decoder: ×2 transposed convs from 1/8 to 1/4 (fused with the
1/4 features projected to C channels by one more ESP module), to 1/2 (fused with the 1/2
features by a 3×3 conv) and to full resolution.

Module and attribute names follow the official code, so its released state dicts
(``pretrained/decoder/espnet_p_2_q_8.pth`` etc.) load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._blocks import BNPReLU, C, ConvBNPReLU, PooledImage, resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.55
BN_EPS = 1e-3  # every BatchNorm in the official code
RATES = (1, 2, 4, 8, 16)  # the K = 5 branches (§3.1)


class ESP(nn.Module):
    """Reduce → split into 5 dilated 3×3 → hierarchical fusion → concat (→ + input) → BN + PReLU.

    ``stride=2`` is the official ``DownSamplerB`` (3×3 stride-2 reduction, no residual, BN/PReLU
    as ``bn``/``act``); otherwise ``DilatedParllelResidualBlockB`` (1×1 reduction, ``bn`` a BNPReLU, the official BR).
    The first branch takes the remainder so the concat has exactly ``n_out`` channels.
    """

    def __init__(self, n_in: int, n_out: int, stride: int = 1, add: bool = True) -> None:
        super().__init__()
        n = n_out // len(RATES)
        if n < 1:
            raise ConfigError(f"model.params.num_classes: an ESP module needs >= 5 channels, got {n_out}")
        self.c1 = C(n_in, n, 3 if stride == 2 else 1, stride)
        for rate in RATES:
            setattr(self, f"d{rate}", C(n, n_out - 4 * n if rate == 1 else n, 3, 1, rate))
        self.add = add and stride == 1 and n_in == n_out
        if stride == 2:
            self.bn, self.act = nn.BatchNorm2d(n_out, eps=BN_EPS), nn.PReLU(n_out)
        else:
            self.bn = BNPReLU(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.c1(x)
        branches = [getattr(self, f"d{rate}")(reduced) for rate in RATES]
        fused = [branches[0]]
        for branch in branches[1:]:  # HFF: d2, d2 + d4, d2 + d4 + d8, d2 + … + d16
            fused.append(branch if len(fused) == 1 else fused[-1] + branch)
        out = torch.cat(fused, dim=1)
        if self.add:
            out = out + x
        out = self.bn(out)
        return self.act(out) if hasattr(self, "act") else out


class ESPNetEncoder(nn.Module):
    """ESPNet-C: level 1 (1/2) → ESP×(1+p) at 1/4 → ESP×(1+q) at 1/8, with image re-injection."""

    def __init__(self, num_classes: int, p: int = 2, q: int = 8, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        if p < 1 or q < 1:
            raise ConfigError(f"model.params.{'p' if p < 1 else 'q'}: needs at least one ESP module, got {min(p, q)}")
        self.level1 = ConvBNPReLU(3, 16, 3, 2)
        self.sample1, self.sample2 = PooledImage(1), PooledImage(2)
        self.b1 = BNPReLU(16 + 3)
        self.level2_0 = ESP(16 + 3, 64, stride=2)
        self.level2 = nn.ModuleList(ESP(64, 64) for _ in range(p))
        self.b2 = BNPReLU(128 + 3)
        self.level3_0 = ESP(128 + 3, 128, stride=2)
        self.level3 = nn.ModuleList(ESP(128, 128) for _ in range(q))
        self.b3 = BNPReLU(256)
        self.classifier = C(256, num_classes, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Level 1 (1/2, 16 channels), level 1 + image (1/2, 19), the 1/4 concat (131), the 1/8 concat (256)."""
        level1 = self.level1(x)
        level1_cat = self.b1(torch.cat([level1, self.sample1(x)], 1))
        out1_0 = self.level2_0(level1_cat)
        out1 = out1_0
        for layer in self.level2:
            out1 = layer(out1)
        out1 = self.b2(torch.cat([out1, out1_0, self.sample2(x)], 1))
        out2_0 = self.level3_0(out1)
        out2 = out2_0
        for layer in self.level3:
            out2 = layer(out2)
        return level1, level1_cat, out1, self.b3(torch.cat([out2_0, out2], 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = self.classifier(self.features(x)[-1])  # 1/8; the official code trains on 1/8 labels
        return {"out": resize_to(scores, x.shape[-2:], self.align_corners)}


def _up2(module: nn.Module, x: torch.Tensor, like: torch.Tensor | tuple[int, int]) -> torch.Tensor:
    """×2 transposed conv, cropped to ``like``'s size (it gives 2h ≥ the ceil-halved skip): any input size."""
    size = like.shape[-2:] if isinstance(like, torch.Tensor) else like
    out = module(x)
    return out[..., : size[0], : size[1]]


class ESPNet(nn.Module):
    """ESPNet-C encoder + the light decoder of Fig. 4d (×2 transposed convs with fused skips)."""

    def __init__(self, num_classes: int, p: int = 2, q: int = 8, fuse_image: bool = False,
                 extra_outputs: int = 0) -> None:
        super().__init__()
        if extra_outputs < 0:
            raise ConfigError(f"model.params.extra_outputs: must be >= 0, got {extra_outputs}")
        c = num_classes + extra_outputs  # the decoder is as wide as the outputs it predicts
        self.num_classes, self.fuse_image = num_classes, fuse_image
        self.encoder = ESPNetEncoder(c, p, q)
        self.level3_C = C(128 + 3, c, 1)
        self.br = nn.BatchNorm2d(c, eps=BN_EPS)
        self.conv = ConvBNPReLU((19 if fuse_image else 16) + c, c, 3)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(BNPReLU(2 * c), ESP(2 * c, c, add=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False), BNPReLU(c))
        self.classifier = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        level1, level1_cat, out1, out2 = self.encoder.features(x)
        skip = level1_cat if self.fuse_image else level1
        up3 = _up2(self.up_l3, self.br(self.encoder.classifier(out2)), out1)
        fused = self.combine_l2_l3(torch.cat([self.level3_C(out1), up3], 1))
        up2 = _up2(self.up_l2, fused, skip)
        out = _up2(self.classifier, self.conv(torch.cat([up2, skip], 1)), x.shape[-2:])
        return {"out": out[:, : self.num_classes]}


# The official p = 2, q = 8 models on Cityscapes (20 outputs: 19 classes + the void class the official
# code trains as a class): ESPNet 364,569 parameters (paper §4, Table: 0.364M), ESPNet-C 349,449; both
# counted from the released state dicts (pretrained/{decoder,encoder}/espnet_p_2_q_8.pth) and equal to ours.
_CITYSCAPES = {"num_classes": 20}
_SOURCE = "Mehta et al. 2018, arXiv:1803.06815 (ESPNet 0.364M); sacmehta/ESPNet pretrained/*/espnet_p_2_q_8.pth"


@MODELS.register("espnet_c", paper_params=349_449.0, paper_kwargs=_CITYSCAPES, output_stride=8, source=_SOURCE)
def espnet_c(*, num_classes: int, p: int = 2, q: int = 8, align_corners: bool = False) -> ESPNetEncoder:
    """ESPNet-C: the encoder alone, scores at 1/8 upsampled bilinearly (``align_corners``: the release's test
    script upsamples with PyTorch 0.3's ``nn.Upsample(scale_factor=8)``, i.e. ``True``; its converter sets it)."""
    return ESPNetEncoder(num_classes, p, q, align_corners)


@MODELS.register("espnet", paper_params=364_569.0, paper_kwargs=_CITYSCAPES, output_stride=8, source=_SOURCE)
def espnet(*, num_classes: int, p: int = 2, q: int = 8, fuse_image: bool = False, extra_outputs: int = 0) -> ESPNet:
    """ESPNet: ESPNet-C + the light-weight decoder to full resolution (``fuse_image``: the CamVid release's).

    ``extra_outputs``: outputs past the dataset's classes that the decoder predicts and the output drops. The
    released models train void as one more class, and their whole decoder is that wide, so they need 1."""
    return ESPNet(num_classes, p, q, fuse_image, extra_outputs)

