"""FCN-32s, FCN-16s and FCN-8s on VGG16.

Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015 / PAMI 2016 (arXiv:1411.4038).

The classifier of VGG16 is "convolutionalised": fc6 becomes a 7×7 convolution
and fc7 a 1×1 convolution, so the net takes any input size and produces a
coarse score map at stride 32. FCN-16s and FCN-8s add skip scores from pool4
and pool3, fused by summation after a learnable 2× upsampling.

We follow the *staged* nets of the official caffe code
(shelhamer/fcn.berkeleyvision.org, ``voc-fcn{32,16,8}s/net.py``) rather than
the "at-once" variant: no scaling of the pool3/pool4 inputs, zero-initialised
``score_pool4``/``score_pool3`` (so a fresh skip starts by predicting what the
coarser net predicts), the same conv1_1 padding of 100 and the same crop
offsets, so that output = input size for *any* input size. Pooling uses
``ceil_mode=True`` as caffe does; the offsets are only right with it.

As in the paper (§4.2) the intermediate 2× upsamplers are initialised to
bilinear interpolation and learned, while the final 32×/16×/8× upsampler is
fixed bilinear interpolation; it is therefore a buffer, not a parameter
(the official caffe code also freezes the intermediate ones with lr_mult 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semseg.models._backbones import Pretrained, load_pretrained
from semseg.models._blocks import bilinear_kernel
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 2.10

# VGG16 configuration "D" (Simonyan & Zisserman 2015, Table 1); "M" is a 2×2 max-pool.
# Building from this list reproduces torchvision's ``vgg16().features`` indices exactly,
# so its ImageNet state dict loads with a key remap of the classifier only.
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                     512, 512, 512, "M", 512, 512, 512, "M")
_POOL3, _POOL4 = 17, 24  # ``features[:17]`` ends with pool3, ``features[17:24]`` with pool4

# Crop offsets of the official caffe nets (derived there with caffe.coord_map; re-derived
# in tests/test_models_fcn.py). ``_SKIP_OFFSET`` crops a skip score map to the upsampled
# coarse map, ``_FINAL_OFFSET`` crops the final upsampled map to the input.
_SKIP_OFFSET = {"pool4": 5, "pool3": 9}
_FINAL_OFFSET = {32: 19, 16: 27, 8: 31}


def _vgg16_features() -> nn.Sequential:
    """VGG16 conv layers with caffe FCN's padding 100 on conv1_1 and ceil-mode pooling.

    The padding of 100 makes the 7×7 fc6 see a big enough pool5 for any input
    (even 1×1); the crops at the end remove the margin again.
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(in_channels, int(item), 3, padding=100 if not layers else 1),
                       nn.ReLU(inplace=True)]
            in_channels = int(item)
    return nn.Sequential(*layers)


def _torchvision_vgg16_remap(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``vgg16`` keys → ours: the Linear fc6/fc7 weights become conv kernels.

    torchvision flattens pool5 (N×512×7×7) channel-major, so a plain reshape of
    the Linear weight to (out, 512, 7, 7) gives the equivalent 7×7 convolution.
    """
    out = {k: v for k, v in state.items() if k.startswith("features.")}
    pairs = {"fc6": ("classifier.0", 7), "fc7": ("classifier.3", 1)}
    for ours, (theirs, k) in pairs.items():
        if f"{theirs}.weight" in state:
            weight = state[f"{theirs}.weight"]
            out[f"{ours}.weight"] = weight.reshape(weight.shape[0], -1, k, k)
            out[f"{ours}.bias"] = state[f"{theirs}.bias"]
    return out


class VGG16Trunk(nn.Module):
    """VGG16 with fc6/fc7 as convolutions; returns ``{"pool3", "pool4", "fc7"}``.

    Dropout 0.5 follows fc6 and fc7 as in VGG16 and the FCN nets.
    """

    def __init__(self, pretrained_backbone: Pretrained = False) -> None:
        super().__init__()
        self.features = _vgg16_features()
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.drop6, self.drop7 = nn.Dropout(0.5), nn.Dropout(0.5)
        for m in self.modules():  # torchvision's VGG init (kaiming, fan_out)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        from torchvision.models import VGG16_Weights  # lazy, like _backbones: a slow import

        load_pretrained(self, pretrained_backbone, VGG16_Weights.IMAGENET1K_V1, _torchvision_vgg16_remap)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pool3 = self.features[:_POOL3](x)
        pool4 = self.features[_POOL3:_POOL4](pool3)
        pool5 = self.features[_POOL4:](pool4)
        fc6 = self.drop6(F.relu(self.fc6(pool5), inplace=True))
        fc7 = self.drop7(F.relu(self.fc7(fc6), inplace=True))
        return {"pool3": pool3, "pool4": pool4, "fc7": fc7}


def _crop(x: torch.Tensor, offset: int, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Caffe's Crop layer: ``x[..., offset:offset+H, offset:offset+W]``."""
    return x[..., offset : offset + size[0], offset : offset + size[1]]


def _bilinear_upsampler(num_classes: int, factor: int) -> nn.ConvTranspose2d:
    """A learnable 2×-style upsampler initialised to bilinear interpolation (no bias, as caffe)."""
    up = nn.ConvTranspose2d(num_classes, num_classes, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(num_classes, num_classes, 2 * factor))
    return up


class FCN(nn.Module):
    """FCN on VGG16 with skip scores from ``skips`` (() → 32s, pool4 → 16s, + pool3 → 8s)."""

    def __init__(self, num_classes: int, skips: tuple[str, ...] = (), pretrained_backbone: Pretrained = False) -> None:
        super().__init__()
        self.skips = skips
        self.output_stride = 32 // 2 ** len(skips)
        self.backbone = VGG16Trunk(pretrained_backbone)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        # The paper zero-initialises score_fr; a small Gaussian lets the trunk receive a
        # gradient from the very first step (the paper reports no difference, §4.1).
        nn.init.normal_(self.score_fr.weight, std=0.01)
        nn.init.zeros_(self.score_fr.bias)
        self.skip_scores = nn.ModuleDict()
        self.skip_ups = nn.ModuleDict()
        for name in skips:
            score = nn.Conv2d(256 if name == "pool3" else 512, num_classes, 1)
            nn.init.zeros_(score.weight)  # staged training: a new skip starts as a no-op
            nn.init.zeros_(score.bias)
            self.skip_scores[name] = score
            self.skip_ups[name] = _bilinear_upsampler(num_classes, 2)
        # Fixed bilinear filter for the final upsampling (paper §4.2), one per class:
        # a grouped transposed convolution equals caffe's diagonal C×C kernel.
        kernel = bilinear_kernel(1, 1, 2 * self.output_stride).expand(num_classes, 1, -1, -1)
        self.register_buffer("final_kernel", kernel.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        score = self.score_fr(feats["fc7"])
        for name in self.skips:
            score = self.skip_ups[name](score)
            skip = self.skip_scores[name](feats[name])
            score = score + _crop(skip, _SKIP_OFFSET[name], score.shape[-2:])
        out = F.conv_transpose2d(score, self.final_kernel, stride=self.output_stride, groups=score.shape[1])
        return {"out": _crop(out, _FINAL_OFFSET[self.output_stride], x.shape[-2:])}


# Paper Table 1 gives 134M parameters for FCN-VGG16 (PASCAL VOC, 21 classes). The score
# and skip layers add ≤ 0.03M and the fixed final upsampler is a buffer, so all three nets
# count 134.35–134.38M, within the default 1 % tolerance.
_SOURCE = "Long et al. 2015, arXiv:1411.4038, Table 1 (FCN-VGG16: 134M)"
_VOC = {"num_classes": 21}


@MODELS.register("fcn32s", paper_params=134e6, paper_kwargs=_VOC, output_stride=32, source=_SOURCE)
def fcn32s(*, num_classes: int, pretrained_backbone: Pretrained = False) -> FCN:
    """FCN-32s: score_fr upsampled 32× in one fixed bilinear step."""
    return FCN(num_classes, (), pretrained_backbone)


@MODELS.register("fcn16s", paper_params=134e6, paper_kwargs=_VOC, output_stride=16, source=_SOURCE)
def fcn16s(*, num_classes: int, pretrained_backbone: Pretrained = False) -> FCN:
    """FCN-16s: adds the pool4 skip (stride 16)."""
    return FCN(num_classes, ("pool4",), pretrained_backbone)


@MODELS.register("fcn8s", paper_params=134e6, paper_kwargs=_VOC, output_stride=8, source=_SOURCE,
                 paper_camvid_miou=(57.0, "as reported by Jégou et al. 2017, Table 2 (test split, ImageNet VGG-16)"))
def fcn8s(*, num_classes: int, pretrained_backbone: Pretrained = False) -> FCN:
    """FCN-8s: adds the pool4 and pool3 skips (stride 8), the paper's best net."""
    return FCN(num_classes, ("pool4", "pool3"), pretrained_backbone)
