"""PSANet: point-wise spatial attention (collect + distribute) on a dilated ResNet-50/101.

Zhao, Zhang, Liu, Shi, Loy, Lin and Jia, "PSANet: Point-wise Spatial Attention Network for Scene
Parsing", ECCV 2018; layer sizes from the authors' PyTorch code (hszhao/semseg ``model/psanet.py``,
``lib/psa/src/cpu/psamask.cpp`` and ``config/*/…_psanet*.yaml``).

Every position of the 1/8 feature map predicts how much each other position should contribute to it,
relative to itself (§3.2–3.3). A branch reduces the 2048-channel features to 512 (1×1 conv, BN, ReLU),
shrinks them to half size (bilinear, ``(h - 1) // 2 + 1``), and a 1×1 conv + BN + ReLU and a 1×1 conv
predict an *over-complete* map of (2h' - 1)·(2w' - 1) channels at each position: channel
(dh, dw) is the weight of the position offset by (dh - h' + 1, dw - w' + 1), so every pair of positions of
the training crop is covered. ``psa_mask`` crops, per position, the h'·w' window that falls inside the map,
giving an (h'w')×(h'w') attention; a softmax normalises it. In the *collect* branch position i gathers
Σ_j a_i(j) x_j; in the *distribute* branch position j sends its feature to every i with a_j(i). The two
aggregates are concatenated (1024), projected back to 2048 (1×1 conv, BN, ReLU), upsampled to the feature
size and concatenated with the features (4096); PSPNet's head (3×3 conv 512, BN, ReLU, dropout 0.1, 1×1)
classifies, with PSPNet's auxiliary head on layer3 (loss weight 0.4) in training mode only.

The over-complete map's size is fixed by the training crop, ``mask_size = 2·((crop - 1) // 16 + 1) - 1``:
59×59 for the release's 465×465 ADE20K / VOC crops, 89×89 for its 705×705 Cityscapes crops. At a larger
input the positions beyond the window get weight zero before the softmax, as in the release.

The release's trunk is the deep-stem ResNet (three 3×3 convs, ``_backbones.DeepStemResNet``): the
``*_deepstem`` variants are built on it so that its checkpoints load (``semseg/official/psanet.py``);
the plain ones use torchvision's 7×7 stem and its ImageNet weights.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import DeepStemResNet, Pretrained, ResNetFeatures, dilate_stages
from semseg.models._blocks import ConvBNReLU, conv_head, resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 2.04
DILATION = {"layer3": 2, "layer4": 4}  # output stride 8, as PSPNet
MID_CHANNELS = 512  # PSA(in_channels=2048, mid_channels=512)
MASK_SIZE = (59, 59)  # 2·((465 - 1) // 16 + 1) - 1 for the release's ADE20K crop
PSAType = Literal["collect", "distribute", "bidirectional"]


def psa_mask(mask: torch.Tensor, mask_size: Sequence[int]) -> torch.Tensor:
    """Over-complete map N×(mH·mW)×h×w → attention N×(hw)×(hw), entry [j, i] = weight of position j at i.

    Position i = (y, x) reads channel (y' - y + mH//2)·mW + (x' - x + mW//2) for position j = (y', x');
    offsets outside the mH×mW window give 0 (the release's zero-filled buffer).
    """
    n, _, h, w = mask.shape
    m_h, m_w = mask_size
    ys, xs = torch.arange(h, device=mask.device), torch.arange(w, device=mask.device)
    dy = ys[:, None, None, None] - ys[None, None, :, None] + (m_h - 1) // 2  # [y', ·, y, ·]
    dx = xs[None, :, None, None] - xs[None, None, None, :] + (m_w - 1) // 2  # [·, x', ·, x]
    valid = ((dy >= 0) & (dy < m_h) & (dx >= 0) & (dx < m_w)).reshape(h * w, h * w)
    index = (dy.clamp(0, m_h - 1) * m_w + dx.clamp(0, m_w - 1)).reshape(h * w, h * w)
    gathered = mask.reshape(n, m_h * m_w, h * w).gather(1, index.expand(n, -1, -1))
    return torch.where(valid, gathered, torch.zeros((), dtype=mask.dtype, device=mask.device))


class PSABranch(nn.Module):
    """Reduce → shrink ×2 → predict the over-complete map → psa_mask → softmax → aggregate (collect or distribute)."""

    def __init__(self, in_channels: int, mid: int, mask_size: Sequence[int], distribute: bool) -> None:
        super().__init__()
        self.mask_size, self.distribute = tuple(mask_size), distribute
        self.reduce = ConvBNReLU(in_channels, mid, 1)
        self.attention = nn.Sequential(ConvBNReLU(mid, mid, 1), nn.Conv2d(mid, self.mask_size[0] * self.mask_size[1],
                                                                          1, bias=False))

    def attention_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shrunk features N×C×h'×w', softmax attention N×(h'w')×(h'w') as multiplied from the right)."""
        x = self.reduce(x)
        h, w = x.shape[-2:]
        x = resize_to(x, ((h - 1) // 2 + 1, (w - 1) // 2 + 1), align_corners=True)
        a = psa_mask(self.attention(x), self.mask_size)  # [j, i]: collect reads it as is
        if self.distribute:
            a = a.transpose(1, 2)  # [i, j] = weight of j at i, i.e. i sends to j
        return x, torch.softmax(a, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, a = self.attention_map(x)
        n, c, h, w = x.shape
        return torch.bmm(x.reshape(n, c, h * w), a).reshape(n, c, h, w)


class PSA(nn.Module):
    """Collect and/or distribute branches → 1×1 projection to ``in_channels`` → upsample → concat with the input."""

    def __init__(self, in_channels: int, psa_type: PSAType = "bidirectional",
                 mask_size: Sequence[int] = MASK_SIZE) -> None:
        super().__init__()
        if psa_type not in ("collect", "distribute", "bidirectional"):
            raise ConfigError(f"model.params.psa_type: one of collect, distribute, bidirectional, got {psa_type!r}")
        if len(mask_size) != 2 or any(int(m) < 1 or int(m) % 2 == 0 for m in mask_size):
            raise ConfigError(f"model.params.mask_size: needs two odd sizes >= 1, got {list(mask_size)}")
        kinds = {"collect": [False], "distribute": [True], "bidirectional": [False, True]}[psa_type]
        self.branches = nn.ModuleList(PSABranch(in_channels, MID_CHANNELS, mask_size, d) for d in kinds)
        self.project = ConvBNReLU(MID_CHANNELS * len(kinds), in_channels, 1)
        self.out_channels = 2 * in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
        return torch.cat([x, resize_to(context, x.shape[-2:], align_corners=True)], dim=1)


class PSANet(nn.Module):
    """Dilated ResNet (OS 8) → PSA → 3×3 conv → classifier; layer3 auxiliary head in training mode."""

    def __init__(self, depth: int, num_classes: int, psa_type: PSAType = "bidirectional",
                 mask_size: Sequence[int] = MASK_SIZE, aux: bool = True, dropout: float = 0.1,
                 pretrained_backbone: Pretrained = False, align_corners: bool = True, deep_stem: bool = False) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.params.dropout: must be in [0, 1), got {dropout}")
        self.align_corners = align_corners
        if deep_stem:  # the release's trunk (hszhao/semseg model/resnet.py deep_base), for its weights
            self.backbone: ResNetFeatures = DeepStemResNet(depth, pretrained_backbone)
        else:
            self.backbone = ResNetFeatures(depth, output_stride=8, pretrained_backbone=pretrained_backbone)
        dilate_stages(self.backbone, DILATION)
        channels = self.backbone.channels
        self.psa = PSA(channels["layer4"], psa_type, mask_size)
        self.head = conv_head(self.psa.out_channels, 512, num_classes, dropout)
        self.aux = conv_head(channels["layer3"], 256, num_classes, dropout) if aux else None
        for module in [self.psa, self.head] + ([self.aux] if aux else []):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for head in [self.head] + ([self.aux] if aux else []):
            nn.init.normal_(head[-1].weight, std=0.01)
            nn.init.zeros_(head[-1].bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        size, corners = x.shape[-2:], self.align_corners
        out = {"out": resize_to(self.head(self.psa(feats["layer4"])), size, corners)}
        if self.aux is not None and self.training:
            out["aux"] = resize_to(self.aux(feats["layer3"]), size, corners)
        return out


# Parameter counts: the paper gives none, so they are derived from the release's layer sizes and re-derived in
# tests/test_models_psanet.py. Trunk (torchvision ResNet, no fc): 23,508,032 (R-50) / 42,500,160; the
# release's deep stem adds 123,776. Per branch: reduce 2048·512 + 2·512 = 1,049,600; attention 512·512 + 2·512 +
# 512·59·59 = 2,045,440; projection 1024·2048 + 2·2048 = 2,101,248; head 3×3 4096·512·9 + 2·512 = 18,875,392;
# aux 3×3 2,359,808; classifiers 513·C and 257·C. C = 150 and the 59×59 mask (ADE20K at 465×465, the paper's
# main benchmark).
_SOURCE = ("Zhao et al. 2018 (ECCV), §3; count derived from the released code "
           "(hszhao/semseg model/psanet.py, ade20k_psanet*.yaml; paper gives none)")
_ADE = {"num_classes": 150}
HEAD_PARAMS = 2 * (1_049_600 + 2_045_440) + 2_101_248 + 18_875_392 + 2_359_808
DEEP_STEM_EXTRA = 123_776  # 3×3 convs 3→64, 64→64, 64→128 + BN, minus the 7×7 conv + BN; layer1 taking 128


def _count(trunk: int, deep_stem: bool) -> float:
    return float(trunk + HEAD_PARAMS + 770 * 150 + (DEEP_STEM_EXTRA if deep_stem else 0))


@MODELS.register("psanet_resnet50", paper_params=_count(23_508_032, False), paper_kwargs=_ADE,
                 output_stride=8, source=_SOURCE)
def psanet_resnet50(*, num_classes: int, pretrained_backbone: Pretrained = False,
                    psa_type: PSAType = "bidirectional", mask_size: Sequence[int] = MASK_SIZE, aux: bool = True,
                    dropout: float = 0.1, align_corners: bool = True) -> PSANet:
    """PSANet (bi-directional by default) on torchvision's ResNet-50, the paper's ablation network."""
    return PSANet(50, num_classes, psa_type, mask_size, aux, dropout, pretrained_backbone, align_corners)


@MODELS.register("psanet_resnet101", paper_params=_count(42_500_160, False), paper_kwargs=_ADE,
                 output_stride=8, source=_SOURCE)
def psanet_resnet101(*, num_classes: int, pretrained_backbone: Pretrained = False,
                     psa_type: PSAType = "bidirectional", mask_size: Sequence[int] = MASK_SIZE, aux: bool = True,
                     dropout: float = 0.1, align_corners: bool = True) -> PSANet:
    """PSANet (bi-directional by default) on torchvision's ResNet-101."""
    return PSANet(101, num_classes, psa_type, mask_size, aux, dropout, pretrained_backbone, align_corners)


@MODELS.register("psanet_resnet50_deepstem", paper_params=_count(23_508_032, True), paper_kwargs=_ADE,
                 output_stride=8, source=_SOURCE)
def psanet_resnet50_deepstem(*, num_classes: int, pretrained_backbone: Pretrained = False,
                             psa_type: PSAType = "bidirectional", mask_size: Sequence[int] = MASK_SIZE,
                             aux: bool = True, dropout: float = 0.1, align_corners: bool = True) -> PSANet:
    """PSANet on the release's deep-stem ResNet-50, for its weights (semseg/official/psanet.py; local files only)."""
    return PSANet(50, num_classes, psa_type, mask_size, aux, dropout, pretrained_backbone, align_corners, True)


@MODELS.register("psanet_resnet101_deepstem", paper_params=_count(42_500_160, True), paper_kwargs=_ADE,
                 output_stride=8, source=_SOURCE)
def psanet_resnet101_deepstem(*, num_classes: int, pretrained_backbone: Pretrained = False,
                              psa_type: PSAType = "bidirectional", mask_size: Sequence[int] = MASK_SIZE,
                              aux: bool = True, dropout: float = 0.1, align_corners: bool = True) -> PSANet:
    """PSANet on the release's deep-stem ResNet-101 (local weights only)."""
    return PSANet(101, num_classes, psa_type, mask_size, aux, dropout, pretrained_backbone, align_corners, True)
