"""RefineNet (4-cascaded, ResNet-50/101/152) and Light-Weight RefineNet.

Lin, Milan, Shen and Reid, "RefineNet: Multi-Path Refinement Networks for
High-Resolution Semantic Segmentation", CVPR 2017 (arXiv:1611.06612); and
Nekrasov, Shen and Reid, "Light-Weight RefineNet for Real-Time Semantic
Segmentation", BMVC 2018 (arXiv:1810.03272).

A ResNet encoder keeps stride 32; instead of dilating it, RefineNet refines
its coarse output with the finer ResNet stages, one *RefineNet block* per
stage, from 1/32 (RefineNet-4) down to 1/4 (RefineNet-1). A block
(1) adapts its new backbone path: a 3×3 conv to 512 (RefineNet-4) or 256
channels, then two residual conv units (RCU: ReLU-conv-ReLU-conv + identity,
no BN); (2) fuses it with the coarser block's output (multi-resolution
fusion: a 3×3 conv per input to the smaller width, bilinear upsampling of the
coarse one, sum); (3) applies chained residual pooling (CRP: ReLU, then a
chain of 5×5 stride-1 max-pools each followed by a 3×3 conv, every link
summed into the output) to gather context; (4) ends with output RCUs. A 3×3
classifier at 1/4 and bilinear upsampling give the input-size logits.

Layer sizes follow the authors' released code (guosheng/refinenet
``gen_network_refine_group.m``, ``My_net_util.m``; the same layers as
Nekrasov's PyTorch port of the released ResNet-101 weights,
DrSleep/refinenet-pytorch): CRP with **4** pool-conv links (the paper's
Fig. 2(d) draws 2; ``crp_stages`` selects), **3** output RCUs in every block
(the paper describes one per block plus two before the softmax), RCU first
convs with bias, dropout 0.5 on the 1024/2048-channel backbone paths and
before the classifier, a 3×3 classifier.

Light-Weight RefineNet drops every RCU and turns all 3×3 convs of the decoder
(adaptation, fusion, CRP) into 1×1 convs, keeping the widths and the 3×3
classifier; that cuts the decoder from ~75M to ~3.8M parameters. Layers as in
DrSleep/light-weight-refinenet ``models/resnet.py``, which keeps dropout 0.5 on the
layer3 and layer4 features but has none before the classifier.

Both official PyTorch models upsample inside the decoder with
``align_corners=True``; that is the default of ``align_corners`` here, so their
released weights give their logits. The final ×4 to the input size is not in
their models but in their training script (``src/train.py``: bilinear,
``align_corners=False``), and stays that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import Pretrained, ResNetFeatures
from semseg.models._blocks import resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 2.05  # refinenet50 2.05x, refinenet_lw50 2.22x: the smaller one
PATHS = ("layer4", "layer3", "layer2", "layer1")  # RefineNet-4 … RefineNet-1 (1/32 … 1/4)
WIDTHS = (512, 256, 256, 256)  # §3: 512 channels for RefineNet-4 inputs, 256 elsewhere
ADAPT_RCUS, OUTPUT_RCUS = 2, 3  # released code: adapt_conv_num, refine_block_conv_num_mainflow
CRP_STAGES = 4  # MATLAB release (chained_pool_num = 4), released weights and LW code; the paper's Fig. 2(d) draws 2


def _conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class RCU(nn.Module):
    """Residual conv unit: x + conv(ReLU(conv(ReLU(x)))), no BN (paper §3.2, Fig. 2(b)).

    Without BN the block is cheap to fine-tune at batch 1, which is how RefineNet was trained.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, 3, bias=True)  # the released code biases only the first
        self.conv2 = _conv(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class CRP(nn.Module):
    """Chained residual pooling (§3.2, Fig. 2(d)): ReLU, then ``stages`` × (5×5 max-pool → conv).

    Each link pools the previous link's output, so later links see larger windows;
    the sum of the input and all links lets the net weight those contexts. Pool before
    conv as the figure, the released models and the PyTorch ports; the MATLAB training
    code's default "improved" link is conv before pool (see doc/refinenet.md).
    """

    def __init__(self, channels: int, stages: int, kernel_size: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.convs = nn.ModuleList(_conv(channels, channels, kernel_size) for _ in range(stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = top = F.relu(x)
        for conv in self.convs:
            top = conv(self._pool(top))
            x = x + top
        return x

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """The 5×5 pool, on CPU through channels-last memory: PyTorch's CPU max-pool is ~10× faster
        there than on NCHW (it was 62 % of Light-Weight RefineNet's forward). The values and
        gradients are bit-identical; the result is handed back in the layout it came in."""
        if x.device.type != "cpu" or not x.is_contiguous():
            return self.pool(x)
        return self.pool(x.contiguous(memory_format=torch.channels_last)).contiguous()


class RefineBlock(nn.Module):
    """Adapt one backbone path, fuse it with the coarser block's output, CRP, output RCUs.

    ``light`` gives the Light-Weight block: 1×1 convs and no RCUs.
    """

    def __init__(self, in_channels: int, width: int, upper_width: int | None, light: bool, crp_stages: int,
                 align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        k = 1 if light else 3
        rcus = 0 if light else ADAPT_RCUS
        self.adapt = nn.Sequential(_conv(in_channels, width, k), *(RCU(width) for _ in range(rcus)))
        self.out_channels = width if upper_width is None else min(width, upper_width)
        self.fuse: nn.ModuleList | None = None  # multi-resolution fusion, to the smaller width (§3.2)
        if upper_width is not None:
            self.fuse = nn.ModuleList([_conv(width, self.out_channels, k), _conv(upper_width, self.out_channels, k)])
        self.crp = CRP(self.out_channels, crp_stages, k)
        self.output = nn.Sequential(*(RCU(self.out_channels) for _ in range(0 if light else OUTPUT_RCUS)))

    def forward(self, x: torch.Tensor, upper: torch.Tensor | None = None) -> torch.Tensor:
        x = self.adapt(x)
        if self.fuse is not None:
            if upper is None:
                raise ValueError("this RefineNet block fuses a coarser path, but none was given")
            # Reduce channels at the coarse resolution, then upsample: cheaper, as the released code.
            x = self.fuse[0](x) + resize_to(self.fuse[1](upper), x.shape[-2:], self.align_corners)
        return self.output(self.crp(x))


class RefineNet(nn.Module):
    """ResNet (stride 32) → RefineNet-4 … RefineNet-1 → dropout → 3×3 classifier at 1/4 → upsample."""

    def __init__(
        self,
        depth: int,
        num_classes: int,
        light: bool = False,
        dropout: float = 0.5,
        crp_stages: int = CRP_STAGES,
        pretrained_backbone: Pretrained = False,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.params.dropout: must be in [0, 1), got {dropout}")
        if crp_stages < 1:
            raise ConfigError(f"model.params.crp_stages: must be ≥ 1, got {crp_stages}")
        self.backbone = ResNetFeatures(depth, output_stride=32, pretrained_backbone=pretrained_backbone)
        blocks: list[RefineBlock] = []
        upper: int | None = None
        for path, width in zip(PATHS, WIDTHS):
            blocks.append(RefineBlock(self.backbone.channels[path], width, upper, light, crp_stages, align_corners))
            upper = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        # Released code: dropout on backbone paths wider than 512 channels (layer3, layer4); the
        # full RefineNet also before the classifier, the Light-Weight one not.
        self.drop_paths = {p for p in PATHS if self.backbone.channels[p] > 512}
        self.dropout = nn.Dropout(dropout)
        self.drop_classifier = not light
        self.classifier = _conv(WIDTHS[-1], num_classes, 3, bias=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        paths = [self.dropout(feats[p]) if p in self.drop_paths else feats[p] for p in PATHS]
        y = self.blocks[0](paths[0])
        for block, path in zip(self.blocks[1:], paths[1:]):
            y = block(path, y)
        y = self.dropout(y) if self.drop_classifier else y
        return {"out": resize_to(self.classifier(y), x.shape[-2:])}  # src/train.py: align_corners=False


# Parameter counts at 21 classes (PASCAL VOC, the datasets of both papers' main tables and of the
# released weights). Torchvision ResNet trunks without fc: 23,508,032 (50) / 42,500,160 (101) /
# 58,143,808 (152). Classifier 3×3 conv 256→C with bias: 2,305·C.
# RefineNet decoder (derived; the paper gives no count), checked block by block in the tests:
#   RefineNet-4: adapt 3×3 2048→512 9,437,184 + 2 RCUs 9,438,208 + CRP 4·2,359,296 + 3 RCUs 14,157,312
#   RefineNet-3/2/1: adapt 3×3 C_in→256 (C_in 1024/512/256) + 2 RCUs 2,359,808 + fusion 3×3 convs
#     (own path 589,824; coarser path 512→256 1,179,648 in RefineNet-3, 256→256 589,824 after)
#     + CRP 4·589,824 + 3 RCUs 3,539,712                                      → 75,503,872 in all.
# Light-Weight decoder: the same convs as 1×1 and no RCUs                    →  3,801,088.
_FULL_DECODER, _LW_DECODER, _CLASSIFIER = 75_503_872, 3_801_088, 2_305
_TRUNK = {50: 23_508_032, 101: 42_500_160, 152: 58_143_808}
_VOC = {"num_classes": 21}
_SOURCE_FULL = ("Lin et al. 2017, arXiv:1611.06612, §3 (count derived from the released code's layer "
                "sizes, guosheng/refinenet; the paper gives none)")
_SOURCE_LW = ("Nekrasov et al. 2018, arXiv:1810.03272, Table 1 as listed in DrSleep/light-weight-refinenet "
              "README (Params, M: 27 / 46 / 62)")


def _full_count(depth: int) -> float:
    return float(_TRUNK[depth] + _FULL_DECODER + _CLASSIFIER * _VOC["num_classes"])


# The Light-Weight table rounds to whole millions, so any count within ±0.5M prints the same:
# the tolerance is that half-unit relative to the figure (1.9 % / 1.1 % / 0.8 %).
def _lw_tolerance(paper_millions: float) -> float:
    return 0.5 / paper_millions


@MODELS.register("refinenet50", paper_params=_full_count(50), paper_kwargs=_VOC, output_stride=32,
                 source=_SOURCE_FULL)
def refinenet50(*, num_classes: int, pretrained_backbone: Pretrained = False, dropout: float = 0.5,
                crp_stages: int = CRP_STAGES, align_corners: bool = True) -> RefineNet:
    """4-cascaded RefineNet on ResNet-50."""
    return RefineNet(50, num_classes, False, dropout, crp_stages, pretrained_backbone, align_corners)


@MODELS.register("refinenet101", paper_params=_full_count(101), paper_kwargs=_VOC, output_stride=32,
                 source=_SOURCE_FULL)
def refinenet101(*, num_classes: int, pretrained_backbone: Pretrained = False, dropout: float = 0.5,
                 crp_stages: int = CRP_STAGES, align_corners: bool = True) -> RefineNet:
    """4-cascaded RefineNet on ResNet-101 (the paper's main model)."""
    return RefineNet(101, num_classes, False, dropout, crp_stages, pretrained_backbone, align_corners)


@MODELS.register("refinenet152", paper_params=_full_count(152), paper_kwargs=_VOC, output_stride=32,
                 source=_SOURCE_FULL)
def refinenet152(*, num_classes: int, pretrained_backbone: Pretrained = False, dropout: float = 0.5,
                 crp_stages: int = CRP_STAGES, align_corners: bool = True) -> RefineNet:
    """4-cascaded RefineNet on ResNet-152."""
    return RefineNet(152, num_classes, False, dropout, crp_stages, pretrained_backbone, align_corners)


@MODELS.register("refinenet_lw50", paper_params=27e6, params_tolerance=_lw_tolerance(27), paper_kwargs=_VOC,
                 output_stride=32, source=_SOURCE_LW)
def refinenet_lw50(*, num_classes: int, pretrained_backbone: Pretrained = False, dropout: float = 0.5,
                    align_corners: bool = True) -> RefineNet:
    """Light-Weight RefineNet on ResNet-50: 1×1 decoder convs, no RCUs, dropout on layer3/layer4 only."""
    return RefineNet(50, num_classes, True, dropout, CRP_STAGES, pretrained_backbone, align_corners)


@MODELS.register("refinenet_lw101", paper_params=46e6, params_tolerance=_lw_tolerance(46), paper_kwargs=_VOC,
                 output_stride=32, source=_SOURCE_LW)
def refinenet_lw101(*, num_classes: int, pretrained_backbone: Pretrained = False, dropout: float = 0.5,
                    align_corners: bool = True) -> RefineNet:
    """Light-Weight RefineNet on ResNet-101."""
    return RefineNet(101, num_classes, True, dropout, CRP_STAGES, pretrained_backbone, align_corners)


@MODELS.register("refinenet_lw152", paper_params=62e6, params_tolerance=_lw_tolerance(62), paper_kwargs=_VOC,
                 output_stride=32, source=_SOURCE_LW)
def refinenet_lw152(*, num_classes: int, pretrained_backbone: Pretrained = False, dropout: float = 0.5,
                    align_corners: bool = True) -> RefineNet:
    """Light-Weight RefineNet on ResNet-152."""
    return RefineNet(152, num_classes, True, dropout, CRP_STAGES, pretrained_backbone, align_corners)
