"""CGNet: a light-weight context guided network, built from context guided (CG) blocks.

Wu, Tang, Zhang, Cao and Zhang, "CGNet: A Light-weight Context Guided Network for Semantic
Segmentation", IEEE TIP 2020 (arXiv:1811.08201); layer sizes from the authors' PyTorch code
(wutianyiRosun/CGNet ``model/CGNet.py``, ``Context_Guided_Network``).

The CG block (§3.1) learns a *joint feature* of two things at every position: the local feature
f_loc (a 3×3 channel-wise conv) and the surrounding context f_sur (a 3×3 channel-wise conv at a
dilation rate), concatenated and normalised (BN + PReLU). The *global context* f_glo then
re-weights the joint feature channel by channel (global average pool → two fully connected
layers → sigmoid, a squeeze-and-excitation gate), and a global residual adds the block's input
(GRL, the better of the paper's two residual forms). A 1×1 conv halves the channels first, so
f_loc and f_sur each produce half of the output. The down-sampling block starts with a 3×3
stride-2 conv instead, doubles the channels with the concat and reduces them back with a 1×1
conv, and has no residual.

CGNet (§3.2, "deep and thin") has three stages: three 3×3 convs (the first at stride 2, 32
channels) at 1/2; M CG blocks at 1/4 (64 channels, dilation 2, reduction 8); N CG blocks at
1/8 (128 channels, dilation 4, reduction 16). The image, average-pooled to 1/2 and 1/4, is
re-injected into the inputs of stages 2 and 3 (input injection, as ESPNet), and the first and
last block outputs of stages 2 and 3 are concatenated. A 1×1 conv classifies the 256-channel
1/8 map and a bilinear upsampling brings it to the input size. M = 3, N = 21 is the paper's
model (CGNet_M3N21). Every BatchNorm has eps 1e-3, every PReLU one slope per channel, every
conv is bias-free, as the official code.

Attribute names follow the official code, so its state dicts load by name (after stripping
DataParallel's ``module.`` prefix).
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._blocks import BNPReLU, C, ConvBNPReLU, PooledImage, resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.05  # not faster than fp32 (FAST_ENOUGH 1.10): fp32 on CPU

BN_EPS = 1e-3  # every BatchNorm in the official model/CGNet.py
STAGE1_CHANNELS = 32  # §3.2 and the official code: stage 1 is three 3×3 convs of 32 channels
STAGE2 = (64, 2, 8)  # channels, f_sur dilation, f_glo reduction of stage 2 (official code)
STAGE3 = (128, 4, 16)  # the same for stage 3


class FGlo(nn.Module):
    """f_glo (§3.1): global average pool → FC C → C/r → ReLU → FC C/r → C → sigmoid, times the input."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels),
                                nn.Sigmoid())

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel gate in (0, 1), N×C×1×1."""
        return self.fc(x.mean(dim=(2, 3))).unsqueeze(-1).unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class ContextGuidedBlock(nn.Module):
    """1×1 reduce to C/2 → [f_loc 3×3 channel-wise | f_sur 3×3 channel-wise at ``dilation``] → BN + PReLU
    → f_glo → + input (global residual learning)."""

    def __init__(self, channels: int, dilation: int, reduction: int, add: bool = True) -> None:
        super().__init__()
        n = channels // 2
        self.conv1x1 = ConvBNPReLU(channels, n, 1)
        self.F_loc = C(n, n, 3, groups=n)
        self.F_sur = C(n, n, 3, dilation=dilation, groups=n)
        self.bn_prelu = BNPReLU(channels)
        self.F_glo = FGlo(channels, reduction)
        self.add = add

    def joint(self, x: torch.Tensor) -> torch.Tensor:
        """The joint feature f_joi: concat of local feature and surrounding context, BN + PReLU."""
        reduced = self.conv1x1(x)
        return self.bn_prelu(torch.cat([self.F_loc(reduced), self.F_sur(reduced)], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.F_glo(self.joint(x))
        return x + out if self.add else out


class ContextGuidedBlockDown(nn.Module):
    """The down-sampling CG block: 3×3 stride-2 conv to C → [f_loc | f_sur] (2C) → BN + PReLU → 1×1 to C
    → f_glo; no residual (the official ``ContextGuidedBlock_Down``)."""

    def __init__(self, n_in: int, n_out: int, dilation: int, reduction: int) -> None:
        super().__init__()
        self.conv1x1 = ConvBNPReLU(n_in, n_out, 3, stride=2)  # the official name, though a 3×3
        self.F_loc = C(n_out, n_out, 3, groups=n_out)
        self.F_sur = C(n_out, n_out, 3, dilation=dilation, groups=n_out)
        self.bn = nn.BatchNorm2d(2 * n_out, eps=BN_EPS)
        self.act = nn.PReLU(2 * n_out)
        self.reduce = C(2 * n_out, n_out, 1)
        self.F_glo = FGlo(n_out, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x)
        joint = self.act(self.bn(torch.cat([self.F_loc(out), self.F_sur(out)], 1)))
        return self.F_glo(self.reduce(joint))


class CGNet(nn.Module):
    """Stage 1 (3 convs, 1/2) → M CG blocks (1/4) → N CG blocks (1/8) → 1×1 classifier → bilinear to H×W."""

    def __init__(self, num_classes: int, m: int = 3, n: int = 21, dropout: float = 0.0) -> None:
        super().__init__()
        if m < 1 or n < 1:
            key = "m" if m < 1 else "n"
            raise ConfigError(f"model.params.{key}: a stage needs at least one CG block, got {min(m, n)}")
        c1, (c2, d2, r2), (c3, d3, r3) = STAGE1_CHANNELS, STAGE2, STAGE3
        self.level1_0 = ConvBNPReLU(3, c1, 3, stride=2)
        self.level1_1 = ConvBNPReLU(c1, c1, 3)
        self.level1_2 = ConvBNPReLU(c1, c1, 3)
        self.sample1, self.sample2 = PooledImage(1), PooledImage(2)
        self.b1 = BNPReLU(c1 + 3)
        self.level2_0 = ContextGuidedBlockDown(c1 + 3, c2, d2, r2)
        self.level2 = nn.ModuleList(ContextGuidedBlock(c2, d2, r2) for _ in range(m - 1))
        self.bn_prelu_2 = BNPReLU(2 * c2 + 3)
        self.level3_0 = ContextGuidedBlockDown(2 * c2 + 3, c3, d3, r3)
        self.level3 = nn.ModuleList(ContextGuidedBlock(c3, d3, r3) for _ in range(n - 1))
        self.bn_prelu_3 = BNPReLU(2 * c3)
        self.dropout = nn.Dropout2d(dropout)  # the official dropout_flag: Dropout2d(0.1); off in their scripts
        self.classifier = nn.Sequential(C(2 * c3, num_classes, 1))
        for module in self.modules():  # the official init: He-normal convs (fan-in), zero biases
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage outputs: the 1/2 concat (32 + 3), the 1/4 concat (64 + 64 + 3), the 1/8 concat (128 + 128)."""
        stage1 = self.b1(torch.cat([self.level1_2(self.level1_1(self.level1_0(x))), self.sample1(x)], 1))
        first2 = self.level2_0(stage1)
        out2 = first2
        for block in self.level2:
            out2 = block(out2)
        stage2 = self.bn_prelu_2(torch.cat([out2, first2, self.sample2(x)], 1))
        first3 = self.level3_0(stage2)
        out3 = first3
        for block in self.level3:
            out3 = block(out3)
        return stage1, stage2, self.bn_prelu_3(torch.cat([first3, out3], 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = self.classifier(self.dropout(self.features(x)[-1]))
        return {"out": resize_to(scores, x.shape[-2:])}  # align_corners=False, as the official upsample


# CGNet_M3N21 on Cityscapes (19 classes): the paper's "0.5M" (abstract: "less than 0.5 M parameters");
# the authors' model/CGNet.py at M = 3, N = 21, 19 classes has exactly 496,306, and so has ours
# (tests/test_models_cgnet.py re-derives it layer by layer). Results, single scale, no post-processing:
# Cityscapes test 64.8 % mIoU (fine annotations only), CamVid test 65.6 % (trained on train + val at
# 480×360; the authors' README: 14.3 points above ENet's 51.3).
_SOURCE = ("Wu et al. 2020, arXiv:1811.08201 (CGNet_M3N21: 0.5M, Cityscapes test 64.8 mIoU); "
           "wutianyiRosun/CGNet model/CGNet.py: 496,306 at 19 classes")
_CAMVID = "Wu et al. 2020, arXiv:1811.08201 (CamVid test, trained on train+val; wutianyiRosun/CGNet README)"


@MODELS.register("cgnet", paper_params=0.5e6, paper_kwargs={"num_classes": 19}, output_stride=8, source=_SOURCE,
                 paper_cityscapes_miou=(64.8, "Wu et al. 2020, arXiv:1811.08201 (Cityscapes test, fine only)"),
                 paper_camvid_miou=(65.6, _CAMVID))
def cgnet(*, num_classes: int, m: int = 3, n: int = 21, dropout: float = 0.0) -> CGNet:
    """CGNet_M3N21 (``m``, ``n``: CG blocks in stages 2 and 3; ``dropout``: Dropout2d before the classifier)."""
    return CGNet(num_classes, m, n, dropout)
