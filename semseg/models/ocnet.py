"""OCNet: object context by self-attention (base-OC, pyramid-OC, ASP-OC) on a dilated ResNet-101.

Yuan and Wang, "OCNet: Object Context Network for Scene Parsing", arXiv:1809.00916 (2018); layer sizes from
the authors' PyTorch code (openseg-group/OCNet.pytorch, ``oc_module/*.py``, ``network/resnet101_*_oc.py``,
``run_resnet101_*.sh``).

The context of a pixel should be the pixels of the *same object*. OCNet estimates it with self-attention
(§3.2): keys and queries (one shared 1×1 conv + BN, ``key`` channels) give a softmax similarity
``softmax(q·kᵀ / √key)`` over positions, which weights a 1×1 value conv; a zero-initialised 1×1 conv ``W``
maps the result back, so the module starts as the identity context. Three heads on the 1/8 features
(2048 → 3×3 conv 512 first):

- **base-OC**: one attention over the whole map (key 256, value 256); its output is concatenated with the
  512 features and fused by a 1×1 conv (512) + BN + dropout 0.05.
- **pyramid-OC**: attention inside each cell of 1×1, 2×2, 3×3 and 6×6 partitions (key 256, value 512); the
  four context maps and the features (1×1 conv to 4·512) are concatenated (4096) and fused to 512.
- **ASP-OC**: DeepLab's ASPP with its image-pooling branch replaced by a base-OC branch: a 3×3 conv (256)
  and attention on a 2×2 max-pooled map (key 128, value 256, upsampled back), plus a 1×1 and three 3×3
  convs at rates 12, 24, 36 (256 each); concatenated (1280) and fused to 512 with dropout 0.1.

A 1×1 conv classifies the 512 channels; a deeply supervised head on layer3 (3×3 conv 512, BN, dropout, 1×1;
loss weight 0.4, the release's ``dsn_weight``) is returned as ``"aux"`` in training mode only. The release's
BN is InPlace-ABN whose default activation is leaky ReLU (slope 0.01): every "BN" above is BN + leaky ReLU,
except where the release uses its activation-free ``BatchNorm2d`` (the pyramid-OC 3×3 conv and aux head).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import Pretrained, ResNetFeatures, dilate_stages
from semseg.models._blocks import resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 2.04
DILATION = {"layer3": 2, "layer4": 4}  # output stride 8, no multi-grid (release: multi_grid=(1, 1, 1))
PYRAMID = (1, 2, 3, 6)  # pyramid-OC partitions (Pyramid_OC_Module sizes)
ASP_RATES = (12, 24, 36)  # ASP_OC_Module dilations


def bn_act(channels: int, act: bool = True) -> nn.Sequential:
    """InPlace-ABN as the release: BN + leaky ReLU (0.01), or BN alone."""
    return nn.Sequential(nn.BatchNorm2d(channels), *([nn.LeakyReLU(0.01, inplace=True)] if act else []))


def conv_bn(c_in: int, c_out: int, k: int, dilation: int = 1, bias: bool = True, act: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=dilation * (k - 1) // 2, dilation=dilation, bias=bias),
                         *bn_act(c_out, act))


class SelfAttention(nn.Module):
    """softmax(q·kᵀ/√key)·v with shared key/query convs, then a (zero-initialised) 1×1 ``W``.

    ``scale > 1`` either max-pools the input by ``scale`` first and upsamples the result (base-OC's
    ``_SelfAttentionBlock``) or, with ``pyramid``, attends within each cell of a scale×scale partition.
    """

    def __init__(self, in_channels: int, key: int, value: int, out: int, scale: int = 1, pyramid: bool = False,
                 zero_init: bool = True) -> None:
        super().__init__()
        self.scale, self.pyramid, self.key_channels = scale, pyramid, key
        self.f_key = conv_bn(in_channels, key, 1)  # also the query transform (the release: f_query = f_key)
        self.f_value = nn.Conv2d(in_channels, value, 1)
        self.W = nn.Conv2d(value, out, 1)
        if zero_init:
            nn.init.zeros_(self.W.weight)
            nn.init.zeros_(self.W.bias)

    def attend(self, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        n, _, h, w = value.shape
        k = key.flatten(2)  # N × key × hw
        sim = torch.softmax(torch.bmm(k.transpose(1, 2), k) * self.key_channels ** -0.5, dim=-1)
        return torch.bmm(value.flatten(2), sim.transpose(1, 2)).reshape(n, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.pyramid:
            key, value = self.f_key(x), self.f_value(x)
            rows, cols = _cells(h, self.scale), _cells(w, self.scale)
            context = torch.cat([torch.cat([self.attend(key[..., r0:r1, c0:c1], value[..., r0:r1, c0:c1])
                                            for c0, c1 in cols], dim=3) for r0, r1 in rows], dim=2)
            return self.W(context)
        small = nn.functional.max_pool2d(x, self.scale) if self.scale > 1 else x
        context = self.W(self.attend(self.f_key(small), self.f_value(small)))
        return resize_to(context, (h, w), align_corners=True)


def _cells(size: int, scale: int) -> list[tuple[int, int]]:
    """The release's partition: ``scale`` cells of ``size // scale``, the last one taking the remainder."""
    step = size // scale
    return [(i * step, size if i == scale - 1 else (i + 1) * step) for i in range(scale)]


class BaseOC(nn.Module):
    """3×3 conv 2048→512 → attention (key 256, value 256) → concat with the 512 features → 1×1 512, dropout 0.05."""

    def __init__(self, in_channels: int, zero_init: bool = True) -> None:
        super().__init__()
        self.reduce = conv_bn(in_channels, 512, 3)
        self.attention = SelfAttention(512, 256, 256, 512, zero_init=zero_init)
        self.fuse = nn.Sequential(conv_bn(1024, 512, 1), nn.Dropout2d(0.05))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.fuse(torch.cat([self.attention(x), x], dim=1))


class PyramidOC(nn.Module):
    """3×3 conv 2048→512 (BN, no activation) → cell attention at 1/2/3/6 + 1×1 up to 4·512 → 4096 → 1×1 512."""

    def __init__(self, in_channels: int, sizes: Sequence[int] = PYRAMID, zero_init: bool = True) -> None:
        super().__init__()
        if not sizes or any(int(s) < 1 for s in sizes):
            raise ConfigError(f"model.params.sizes: needs partition sizes >= 1, got {list(sizes)}")
        self.reduce = conv_bn(in_channels, 512, 3, act=False)
        self.stages = nn.ModuleList(SelfAttention(512, 256, 512, 512, int(s), pyramid=True, zero_init=zero_init)
                                    for s in sizes)
        self.up = conv_bn(512, 512 * len(sizes), 1)
        self.fuse = nn.Sequential(conv_bn(2 * 512 * len(sizes), 512, 1), nn.Dropout2d(0.05))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.fuse(torch.cat([self.up(x)] + [stage(x) for stage in self.stages], dim=1))


class ASPOC(nn.Module):
    """3×3 conv 2048→512 → [OC branch (3×3 256 + attention on the 2×2-pooled map), 1×1, 3×3 at 12/24/36] → 512."""

    def __init__(self, in_channels: int, rates: Sequence[int] = ASP_RATES, zero_init: bool = True) -> None:
        super().__init__()
        if len(rates) != 3 or any(int(r) < 1 for r in rates):
            raise ConfigError(f"model.params.rates: needs three rates >= 1, got {list(rates)}")
        self.reduce = conv_bn(in_channels, 512, 3)
        self.context = nn.Sequential(conv_bn(512, 256, 3), SelfAttention(256, 128, 256, 256, 2, zero_init=zero_init),
                                     conv_bn(256, 256, 1))
        self.branches = nn.ModuleList([conv_bn(512, 256, 1, bias=False)]
                                      + [conv_bn(512, 256, 3, int(r), bias=False) for r in rates])
        self.fuse = nn.Sequential(conv_bn(5 * 256, 512, 1, bias=False), nn.Dropout2d(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.fuse(torch.cat([self.context(x)] + [b(x) for b in self.branches], dim=1))


class OCNet(nn.Module):
    """Dilated ResNet-101 (OS 8) → OC head → 1×1 classifier; layer3 deep-supervision head in training."""

    HEADS = ("base", "pyramid", "asp")

    def __init__(self, head: str, num_classes: int, depth: int = 101, zero_init: bool = True,
                 pretrained_backbone: Pretrained = False, align_corners: bool = True,
                 sizes: Sequence[int] = PYRAMID, rates: Sequence[int] = ASP_RATES) -> None:
        super().__init__()
        if head not in self.HEADS:
            raise ConfigError(f"model.params.head: one of {', '.join(self.HEADS)}, got {head!r}")
        self.align_corners = align_corners
        self.backbone = ResNetFeatures(depth, output_stride=8, pretrained_backbone=pretrained_backbone)
        dilate_stages(self.backbone, DILATION)
        c4, c3 = self.backbone.channels["layer4"], self.backbone.channels["layer3"]
        self.context = {"base": lambda: BaseOC(c4, zero_init), "pyramid": lambda: PyramidOC(c4, sizes, zero_init),
                        "asp": lambda: ASPOC(c4, rates, zero_init)}[head]()
        self.classifier = nn.Conv2d(512, num_classes, 1)
        self.aux = nn.Sequential(conv_bn(c3, 512, 3, act=head != "pyramid"), nn.Dropout2d(0.1 if head == "asp" else 0.05),
                                 nn.Conv2d(512, num_classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        size, corners = x.shape[-2:], self.align_corners
        out = {"out": resize_to(self.classifier(self.context(feats["layer4"])), size, corners)}
        if self.training:
            out["aux"] = resize_to(self.aux(feats["layer3"]), size, corners)
        return out


# Parameter counts: the paper gives none, so they are derived from the release's modules (biases where the
# release has them) and re-derived in tests/test_models_ocnet.py. Trunk: torchvision ResNet-101 without fc,
# 42,500,160. Every head starts with a 3×3 2048→512 conv with bias + BN (9,438,720). base-OC: attention
# (key 131,840, value 131,328, W 131,584) + 1×1 1024→512 fuse 525,824. pyramid-OC: four attentions of 657,152,
# 1×1 512→2048 1,054,720, 1×1 4096→512 fuse 2,098,688. ASP-OC: OC branch 1,180,416 + 164,736 + 66,304, 1×1
# 131,584, three 3×3 3,540,480, fuse 656,384. Plus classifier 513·C and aux 3×3 1024→512 with bias + BN and 513·C.
# C = 19 (Cityscapes, the paper's main benchmark and the release's only dataset).
_SOURCE = ("Yuan & Wang 2018, arXiv:1809.00916, §3; count derived from the released code "
           "(openseg-group/OCNet.pytorch oc_module/, network/resnet101_*_oc.py; paper gives none)")
_CITYSCAPES = {"num_classes": 19}
TRUNK_AUX = 42_500_160 + 9 * 1024 * 512 + 512 + 2 * 512
HEAD_PARAMS = {"base": 10_359_296, "pyramid": 15_220_736, "asp": 15_178_624}


_ZERO_W = "W = 0 (the release's init) leaves key and value without gradient until the first step"


@MODELS.register("ocnet_base_resnet101", paper_params=float(TRUNK_AUX + HEAD_PARAMS["base"] + 2 * 513 * 19),
                 paper_kwargs=_CITYSCAPES, output_stride=8, source=_SOURCE,
                 test_kwargs={"zero_init": False}, test_kwargs_why=_ZERO_W)
def ocnet_base_resnet101(*, num_classes: int, pretrained_backbone: Pretrained = False, zero_init: bool = True,
                         align_corners: bool = True) -> OCNet:
    """Base-OC on the dilated ResNet-101: one attention over the whole map."""
    return OCNet("base", num_classes, 101, zero_init, pretrained_backbone, align_corners)


@MODELS.register("ocnet_pyramid_resnet101", paper_params=float(TRUNK_AUX + HEAD_PARAMS["pyramid"] + 2 * 513 * 19),
                 paper_kwargs=_CITYSCAPES, output_stride=8, source=_SOURCE,
                 test_kwargs={"zero_init": False, "sizes": (1, 2, 3)},
                 test_kwargs_why=_ZERO_W + "; 6×6 cells of a 48-pixel input's 6×6 map are single positions, "
                                           "whose softmax is constant (no key gradient)")
def ocnet_pyramid_resnet101(*, num_classes: int, pretrained_backbone: Pretrained = False, zero_init: bool = True,
                            sizes: Sequence[int] = PYRAMID, align_corners: bool = True) -> OCNet:
    """Pyramid-OC on the dilated ResNet-101: attention within 1×1, 2×2, 3×3 and 6×6 cells."""
    return OCNet("pyramid", num_classes, 101, zero_init, pretrained_backbone, align_corners, sizes)


@MODELS.register("ocnet_asp_resnet101", paper_params=float(TRUNK_AUX + HEAD_PARAMS["asp"] + 2 * 513 * 19),
                 paper_kwargs=_CITYSCAPES, output_stride=8, source=_SOURCE,
                 test_kwargs={"zero_init": False}, test_kwargs_why=_ZERO_W)
def ocnet_asp_resnet101(*, num_classes: int, pretrained_backbone: Pretrained = False, zero_init: bool = True,
                        rates: Sequence[int] = ASP_RATES, align_corners: bool = True) -> OCNet:
    """ASP-OC on the dilated ResNet-101: ASPP with a base-OC branch in place of image pooling."""
    return OCNet("asp", num_classes, 101, zero_init, pretrained_backbone, align_corners, rates=rates)
