"""LinkNet: a ResNet-18 encoder whose block inputs are added to the matching decoder outputs.

Chaurasia and Culurciello, "LinkNet: Exploiting Encoder Representations for
Efficient Semantic Segmentation", VCIP 2017 (arXiv:1707.03718).

Encoder-decoder nets lose spatial detail in the encoder and must relearn it in
the decoder. LinkNet instead *adds* the input of each encoder block to the
output of its decoder block (§2, Fig. 1), so the decoder only refines what the
encoder already knew and can be small: each decoder block is a 1×1 conv m→m/4,
a 3×3 full (transposed) conv m/4→m/4 that upsamples ×2, and a 1×1 conv m/4→n,
each with BN + ReLU (Fig. 3). A final block (3×3 full conv ×2, 64→32; 3×3
conv 32→32; 2×2 full conv ×2, 32→classes) brings stride 4 back to stride 1.

Details the paper leaves open follow the authors' Torch code (e-lab/LinkNet
``models/model.lua``): decoder 1 does not upsample (ResNet-18's layer1 keeps the
stride-4 size), and the shortcut feeding decoder *i*'s sum is the input of
encoder block *i* (the max-pool output for i = 1). The convs before a BN have no
bias here (the Torch code has one; a bias before BN is redundant and would get
no gradient). Transposed convs are given the skip tensor's size as
``output_size``, so odd sizes line up; the final ×2 can overshoot by one pixel,
which is cropped, so the output is always the input size. BatchNorm epsilon is
the Torch code's: 1e-3 in the decoder blocks and the final 3×3 conv
(``SpatialBatchNormalization(n, 1e-3)``), Torch's default 1e-5 after the final
full conv (``SBatchNorm(32)``) and in the ResNet-18 encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import Pretrained, ResNetFeatures
from semseg.models._blocks import ConvBNReLU
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.74
TORCH_DECODER_EPS = 1e-3  # e-lab/LinkNet models/model.lua: SpatialBatchNormalization(n, 1e-3) in the decoder


class TransposedConvBNReLU(nn.Module):
    """Full convolution (3×3, padding 1) → BN → ReLU, upsampling to an exact ``size``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        # stride 2 yields 2h-1 or 2h rows; ``output_size`` picks the one the skip tensor has
        return self.relu(self.bn(self.conv(x, output_size=list(size[-2:]))))


class DecoderBlock(nn.Module):
    """1×1 conv m→m/4 → 3×3 full conv (×stride) m/4→m/4 → 1×1 conv m/4→n, all BN + ReLU (Fig. 3)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bn_eps: float = TORCH_DECODER_EPS) -> None:
        super().__init__()
        mid = in_channels // 4
        self.reduce = ConvBNReLU(in_channels, mid, 1, bn_eps=bn_eps)
        self.up = TransposedConvBNReLU(mid, mid, stride, bn_eps=bn_eps)
        self.expand = ConvBNReLU(mid, out_channels, 1, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.expand(self.up(self.reduce(x), size))


class LinkNet(nn.Module):
    """ResNet encoder (stride 32) → four decoder blocks with additive links → final ×4 block."""

    def __init__(self, depth: int, num_classes: int, pretrained_backbone: Pretrained = False,
                 bn_eps: float = TORCH_DECODER_EPS) -> None:
        super().__init__()
        if not 0.0 < bn_eps < 1.0:
            raise ConfigError(f"model.params.bn_eps: must be in (0, 1), got {bn_eps}")
        self.encoder = ResNetFeatures(depth, output_stride=32, pretrained_backbone=pretrained_backbone)
        ch = self.encoder.channels  # 64, 64, 128, 256, 512 for ResNet-18/34
        self.decoder4 = DecoderBlock(ch["layer4"], ch["layer3"], 2, bn_eps)
        self.decoder3 = DecoderBlock(ch["layer3"], ch["layer2"], 2, bn_eps)
        self.decoder2 = DecoderBlock(ch["layer2"], ch["layer1"], 2, bn_eps)
        self.decoder1 = DecoderBlock(ch["layer1"], ch["stem"], 1, bn_eps)
        self.final_up = TransposedConvBNReLU(ch["stem"], 32, 2)  # SBatchNorm(32): Torch's default eps 1e-5
        self.final_conv = ConvBNReLU(32, 32, 3, bn_eps=bn_eps)
        self.classifier = nn.ConvTranspose2d(32, num_classes, 2, stride=2)
        decoder = [self.decoder4, self.decoder3, self.decoder2, self.decoder1,
                   self.final_up, self.final_conv, self.classifier]
        for m in nn.ModuleList(decoder).modules():  # Torch code: N(0, sqrt(2 / (k·k·out))), BN 1/0
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, std=(2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = self.encoder
        half = enc.stem[:3](x)  # conv1 7×7 /2, BN, ReLU: ⌈H/2⌉
        e0 = enc.stem[3:](half)  # max-pool: ⌈H/4⌉, the input of encoder block 1
        e1 = enc.layer1(e0)
        e2 = enc.layer2(e1)
        e3 = enc.layer3(e2)
        e4 = enc.layer4(e3)
        d = self.decoder4(e4, e3.shape) + e3
        d = self.decoder3(d, e2.shape) + e2
        d = self.decoder2(d, e1.shape) + e1
        d = self.decoder1(d, e0.shape) + e0
        y = self.final_conv(self.final_up(d, half.shape))
        out = self.classifier(y)  # 2·⌈H/2⌉ ≥ H
        return {"out": out[..., : x.shape[-2], : x.shape[-1]]}


# Paper Table 1 (§4): 11.5M parameters. Ours at 12 classes (CamVid 11 + void, as the authors'
# loader) is 11,534,732: ResNet-18 trunk 11,176,512 + decoder blocks 328,896 + final block
# 29,324. The Torch code's conv biases before BN would add 1,056 more; both round to 11.5M.
# The paper rounds to 0.1M (±0.05M = ±0.43 %), inside the default 1 % tolerance.
@MODELS.register("linknet", paper_params=11.5e6, paper_kwargs={"num_classes": 12}, output_stride=32,
                 paper_camvid_miou=(55.8, "Chaurasia & Culurciello 2017, Table 3 (test split, ImageNet encoder)"),
                 source="Chaurasia & Culurciello 2017, arXiv:1707.03718, Table 1 (LinkNet: 11.5M)")
def linknet(*, num_classes: int, pretrained_backbone: Pretrained = False,
            bn_eps: float = TORCH_DECODER_EPS) -> LinkNet:
    """LinkNet on ResNet-18, as in the paper; ``bn_eps`` of the decoder BNs (1e-5 for older checkpoints)."""
    return LinkNet(18, num_classes, pretrained_backbone, bn_eps)


@MODELS.register("linknet34", output_stride=32,
                 source="LinkNet decoder on ResNet-34 (not in the paper; no paper parameter count)")
def linknet34(*, num_classes: int, pretrained_backbone: Pretrained = False,
              bn_eps: float = TORCH_DECODER_EPS) -> LinkNet:
    """LinkNet on ResNet-34: the same decoder (the block widths are equal), a deeper encoder."""
    return LinkNet(34, num_classes, pretrained_backbone, bn_eps)
