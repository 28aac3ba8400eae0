"""LRN: the Label Refinement Network, coarse-to-fine label maps on a VGG-16 encoder.

Islam, Naha, Rochan, Bruce and Wang, "Label Refinement Network for Coarse-to-Fine Semantic
Segmentation", 2017 (arXiv:1703.00551). No code was released for LRN; its authors' G-FRNet release
(mrochan/gfrnet, ``models/camvid/train_camvid_gate.prototxt``, LRN plus gates) confirms the pieces
the paper states: which encoder features feed which stage, C-channel 3×3 convs, BN after them and the
median-frequency class weights.

Encoder (§3): the 13 convolutions of VGG-16 with BatchNorm, as SegNet's encoder, with 2×2 max-pools
(Caffe's ceil rounding). Decoder: six label maps, each with C channels (a "soft label map"). The first,
s1, is a 3×3 conv of the encoder's output (pool5, 1/32). Each next stage k = 2…6 takes the previous
map, bilinearly upsampled ×2, and the encoder feature of that resolution (conv5_3, conv4_3, conv3_3,
conv2_2, conv1_2: f_{7-k}), first reduced to C channels by a 3×3 conv + BN + ReLU, concatenates them
and predicts s_k with a 3×3 conv: s_k = conv3×3(concat(up(s_{k-1}), m(f_{7-k}))). s6 is at the input's
resolution and is ``"out"``. Every stage is supervised (§3, the loss Σ_k ℓ_k with equal weights, each
ℓ_k the cross-entropy against the ground truth resized to s_k's size): in training s1…s5 are returned
as ``"aux_32"``, ``"aux_16"``, ``"aux_8"``, ``"aux_4"``, ``"aux_2"`` (by output stride) at their own
resolution, and the criterion resizes the target to each (nearest neighbour; loss.aux_weight 1 for the
paper's plain sum; semseg/losses/criterion.py).
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.models._backbones import Pretrained, load_pretrained
from semseg.models._blocks import ConvBNReLU, resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 2.35

# torchvision ``vgg16_bn().features``: the ReLU ending each conv block (conv1_2, conv2_2, conv3_3, conv4_3,
# conv5_3) and the max-pool after it; building with torchvision's make_layers keeps its indices, so the
# ImageNet state dict loads by name.
SKIP_RELUS = (5, 12, 22, 32, 42)
SKIP_CHANNELS = (64, 128, 256, 512, 512)
STRIDES = (32, 16, 8, 4, 2)  # output strides of s1…s5, the supervised intermediate label maps


def _vgg16_bn_features() -> nn.Sequential:
    """VGG-16 (configuration D) convs with BatchNorm, torchvision's indices and init; ceil-mode pools."""
    from torchvision.models.vgg import cfgs, make_layers  # lazy, like _backbones

    features = make_layers(cfgs["D"], batch_norm=True)
    for m in features.modules():
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True  # Caffe's rounding: any size keeps every pixel (⌈H/2⌉)
        elif isinstance(m, nn.Conv2d):  # torchvision VGG's own init, for a from-scratch encoder
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


def _features_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``vgg16_bn`` keys → the ``features`` Sequential's (the classifier is dropped)."""
    return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}


class Refinement(nn.Module):
    """One LRN stage: 3×3 conv + BN + ReLU of the skip to C channels, ‖ the ×2-upsampled previous map, 3×3 conv."""

    def __init__(self, skip_channels: int, num_classes: int, align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.reduce = ConvBNReLU(skip_channels, num_classes, 3)
        self.predict = nn.Conv2d(2 * num_classes, num_classes, 3, padding=1)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = resize_to(coarse, skip.shape[-2:], self.align_corners)  # ×2, or to the skip's size when odd
        return self.predict(torch.cat([up, self.reduce(skip)], dim=1))


class LRN(nn.Module):
    """VGG-16-BN encoder → s1 = 3×3 conv of pool5 → five refinement stages up to the input's size."""

    def __init__(self, num_classes: int, pretrained_backbone: Pretrained = False, align_corners: bool = True) -> None:
        super().__init__()
        self.features = _vgg16_bn_features()
        from torchvision.models import VGG16_BN_Weights  # lazy, like _backbones

        load_pretrained(self.features, pretrained_backbone, VGG16_BN_Weights.IMAGENET1K_V1, _features_only)
        self.coarse = nn.Conv2d(SKIP_CHANNELS[-1], num_classes, 3, padding=1)
        self.refines = nn.ModuleList(Refinement(c, num_classes, align_corners) for c in reversed(SKIP_CHANNELS))

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The five block outputs (conv1_2 … conv5_3, strides 1…16) and pool5 (stride 32)."""
        skips, start = [], 0
        for end in SKIP_RELUS:
            x = self.features[start:end + 1](x)
            skips.append(x)
            start = end + 1
        return skips, self.features[start:](x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        skips, bottom = self.encode(x)
        maps = [self.coarse(bottom)]
        for refine, skip in zip(self.refines, reversed(skips)):
            maps.append(refine(maps[-1], skip))
        out = {"out": maps[-1]}  # s6, at conv1_2's size: the input's
        if self.training:  # every stage is supervised; inference uses s6 only
            out.update({f"aux_{stride}": m for stride, m in zip(STRIDES, maps[:-1])})
        return out


# Parameters: the paper gives none; derived from the layer sizes and re-derived in tests/test_models_lrn.py.
# VGG-16 convs 14,714,688 + BN 8,448 = 14,723,136; s1 4,608·C + C; each stage a 3×3 skip reduction
# (9·c·C + 2C for BN, c = 512, 512, 256, 128, 64) and a 3×3 2C → C predictor (18·C² + C): at 11 classes
# (CamVid, the paper's Table 2) 14,723,136 + 50,699 + 145,838 + 10,945 = 14,930,618.
_CAMVID = {"num_classes": 11}
_DECODER_11 = (4_608 * 11 + 11) + sum(9 * c * 11 + 22 for c in SKIP_CHANNELS) + 5 * (18 * 11 * 11 + 11)
_SOURCE = "Islam et al. 2017, arXiv:1703.00551, §3 (count derived from the layer sizes; paper gives none)"


@MODELS.register("lrn", paper_params=14_723_136.0 + _DECODER_11, paper_kwargs=_CAMVID, output_stride=32,
                 source=_SOURCE,
                 paper_camvid_miou=(61.7, "Islam et al. 2017, Table 2 (test split, 11 classes, 360×480)"))
def lrn(*, num_classes: int, pretrained_backbone: Pretrained = False, align_corners: bool = True) -> LRN:
    """LRN on VGG-16 with BatchNorm (torchvision ``vgg16_bn`` ImageNet weights with ``pretrained_backbone``)."""
    return LRN(num_classes, pretrained_backbone, align_corners)
