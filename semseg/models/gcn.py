"""GCN: Global Convolutional Network with Boundary Refinement on a ResNet.

Peng, Zhang, Yu, Luo and Sun, "Large Kernel Matters — Improve Semantic Segmentation by Global
Convolutional Network", CVPR 2017 (arXiv:1703.02719). The authors released no code; everything
below follows the paper's §3 and Fig. 2, and the choices the paper leaves open are marked.

Classification wants large, densely connected kernels (invariance); localisation wants a fully
convolutional net with no global pooling or fully connected layer. The Global Convolutional
Network module (§3.1, Fig. 2B) reconciles them with a k×k receptive field at the cost of two
separable convs per branch: a k×1 conv followed by a 1×k conv, plus a 1×k followed by a k×1,
summed. There is no BatchNorm and no nonlinearity inside it (§3.1), so the module is one
linear k×k-field conv with 2k(C_in + C) weights per output channel instead of k²C_in. k = 15
(§4.1, Table 1: accuracy rises with k up to 15, where the kernel covers the 16×16 top map of a
512×512 input); k = 25 for Cityscapes' 800×800 crops (§4.3, a 25×25 top map).

Boundary Refinement (BR, §3.2, Fig. 2C) is a residual block on the score map: x + conv3×3(ReLU(conv3×3(x))).

Pipeline (Fig. 2A): a GCN + BR on each of res-2..res-5 (1/4 .. 1/32) turns them into C-channel
score maps; from 1/32 each map is upsampled ×2 by a deconvolution, added to the next finer one
and refined by a BR, down to 1/4; two more deconv + BR steps reach 1/2 and the input size.
GCN + BR: 4 GCNs, 9 BRs, 5 deconvolutions.

Open choices, ours: convs carry a bias (Caffe's default; the paper uses Caffe); the deconvolutions
are learned 4×4 stride-2 transposed convs without bias, initialised to bilinear upsampling (FCN's
"in-network upsampling", the usual Caffe practice); each ×2 output is cropped to the finer map's
size, so any input size works (ResNet's stride-2 layers give ⌈h/2⌉, and 2⌈h/2⌉ ≥ h).
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import Pretrained, ResNetFeatures
from semseg.models._blocks import bilinear_kernel
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.86

KERNEL = 15  # §4.1, Table 1 (PASCAL VOC, 512×512 inputs); 25 for Cityscapes (§4.3)
LEVELS = ("layer1", "layer2", "layer3", "layer4")  # res-2 .. res-5 at 1/4, 1/8, 1/16, 1/32 (Fig. 2A)


class GlobalConv(nn.Module):
    """The GCN module (Fig. 2B): (k×1 → 1×k) + (1×k → k×1), no BatchNorm, no ReLU."""

    def __init__(self, n_in: int, n_out: int, k: int) -> None:
        super().__init__()
        if k < 1 or k % 2 == 0:
            raise ConfigError(f"model.params.k: the GCN kernel must be odd (a centred k×k field), got {k}")
        tall = {"kernel_size": (k, 1), "padding": (k // 2, 0)}
        wide = {"kernel_size": (1, k), "padding": (0, k // 2)}
        self.left = nn.Sequential(nn.Conv2d(n_in, n_out, **tall), nn.Conv2d(n_out, n_out, **wide))
        self.right = nn.Sequential(nn.Conv2d(n_in, n_out, **wide), nn.Conv2d(n_out, n_out, **tall))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.left(x) + self.right(x)


class BoundaryRefinement(nn.Module):
    """BR (Fig. 2C): the score map plus a residual branch, conv 3×3 → ReLU → conv 3×3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


def deconv2x(channels: int) -> nn.ConvTranspose2d:
    """A learned ×2 deconvolution (4×4, stride 2: exactly 2h × 2w), initialised to bilinear upsampling."""
    up = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, channels, 4))
    return up


def _up_to(deconv: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return deconv(x)[..., : size[0], : size[1]]


class GCN(nn.Module):
    """ResNet → GCN + BR per stage → deconv ×2, sum, BR from 1/32 to 1/4 → (deconv + BR) ×2 → H×W."""

    def __init__(self, num_classes: int, depth: int, k: int = KERNEL, pretrained_backbone: Pretrained = False) -> None:
        super().__init__()
        c = num_classes
        self.backbone = ResNetFeatures(depth, output_stride=32, pretrained_backbone=pretrained_backbone)
        self.gcn = nn.ModuleList(GlobalConv(self.backbone.channels[name], c, k) for name in LEVELS)
        self.br_score = nn.ModuleList(BoundaryRefinement(c) for _ in LEVELS)  # after each GCN
        self.br_fuse = nn.ModuleList(BoundaryRefinement(c) for _ in LEVELS[:-1])  # [i]: the sum at maps[i]
        self.br_up = nn.ModuleList(BoundaryRefinement(c) for _ in range(2))  # at 1/2 and at the input size
        self.deconv = nn.ModuleList(deconv2x(c) for _ in range(len(LEVELS) + 1))  # 1/32→1/16 … 1/2→1

    def scores(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four per-stage score maps after GCN + BR, finest (1/4) first."""
        feats = self.backbone(x)
        return [br(gcn(feats[name])) for name, gcn, br in zip(LEVELS, self.gcn, self.br_score)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.scores(x)
        y = maps[-1]
        for i in (2, 1, 0):  # 1/32 → 1/16 → 1/8 → 1/4
            skip = maps[i]
            y = self.br_fuse[i](_up_to(self.deconv[2 - i], y, skip.shape[-2:]) + skip)
        h, w = x.shape[-2:]
        y = self.br_up[0](_up_to(self.deconv[3], y, ((h + 1) // 2, (w + 1) // 2)))  # conv1's ⌈H/2⌉
        return {"out": self.br_up[1](_up_to(self.deconv[4], y, (h, w)))}


def head_params(num_classes: int, k: int, trunk_channels: tuple[int, ...] = (256, 512, 1024, 2048)) -> int:
    """The decoder's parameters from Fig. 2: 4 GCNs (4 biased convs each), 9 BRs (2 biased 3×3), 5 deconvs."""
    c = num_classes
    gcn = sum(2 * (k * n * c + c) + 2 * (k * c * c + c) for n in trunk_channels)
    return gcn + 9 * 2 * (9 * c * c + c) + 5 * 16 * c * c


# The paper gives no parameter count. Registered: torchvision's trunk without fc (ResNet-50 23,508,032,
# ResNet-101 42,500,160) plus the decoder of Fig. 2 at k = 15 and C = 21 (PASCAL VOC): GCNs 2,472,456,
# BRs 71,820, deconvs 35,280, so 2,579,556 (head_params; re-derived in tests/test_models_gcn.py).
# The paper's results use ResNet-152: 82.2 % mIoU on VOC 2012 test (COCO pre-training, multi-scale + CRF)
# and 76.9 % on Cityscapes test (k = 25, coarse + fine); doc/gcn.md lists them.
_SOURCE = ("Peng et al. 2017, arXiv:1703.02719, Fig. 2 (count derived: torchvision ResNet trunk + 4 GCN "
           "(k=15, biased convs) + 9 BR + 5 bilinear-initialised 4×4 deconvs at 21 classes; paper gives none)")
_VOC = {"num_classes": 21}
_TRUNK = {50: 23_508_032, 101: 42_500_160}


@MODELS.register("gcn_resnet50", paper_params=float(_TRUNK[50] + head_params(21, KERNEL)), paper_kwargs=_VOC,
                 output_stride=32, source=_SOURCE)
def gcn_resnet50(*, num_classes: int, pretrained_backbone: Pretrained = False, k: int = KERNEL) -> GCN:
    """GCN + BR on torchvision's ResNet-50 (the paper's ablation backbone, §4.1-4.2)."""
    return GCN(num_classes, 50, k, pretrained_backbone)


@MODELS.register("gcn_resnet101", paper_params=float(_TRUNK[101] + head_params(21, KERNEL)), paper_kwargs=_VOC,
                 output_stride=32, source=_SOURCE)
def gcn_resnet101(*, num_classes: int, pretrained_backbone: Pretrained = False, k: int = KERNEL) -> GCN:
    """GCN + BR on torchvision's ResNet-101 (``k``: 15 for 512×512 inputs, 25 for 800×800 Cityscapes crops)."""
    return GCN(num_classes, 101, k, pretrained_backbone)
