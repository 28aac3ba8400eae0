"""ERFNet: Efficient Residual Factorized ConvNet for real-time semantic segmentation.

Romera, Álvarez, Bergasa and Arroyo, IEEE Transactions on Intelligent
Transportation Systems 19(1), 2018 (first published online 2017; no arXiv
version). Layers follow the paper's Table 1; block details (which convolutions
carry BatchNorm, the dropout rates 0.03/0.3, the 2×2 final transposed
convolution, BN eps 1e-3) follow the authors' PyTorch code
(Eromera/erfnet_pytorch, ``train/erfnet.py``).

ERFNet keeps ENet's layout (early downsampling by conv ‖ max-pool, a large
encoder at 1/8 resolution, a small decoder) but replaces the bottleneck with the
"non-bottleneck-1D" residual block: two 3×3 convolutions, each factorised into a
3×1 and a 1×3, at full width. Factorising cuts a 3×3's weights by a third and
adds a non-linearity in between, and keeping full width avoids the accuracy
loss the authors saw with thin bottlenecks. Context comes from dilating the
second pair (2, 4, 8, 16, twice). The decoder upsamples with learned transposed
convolutions, not with max-unpooling.

Changes for arbitrary input sizes: max-pools use ``ceil_mode=True`` (the same
⌈H/2⌉ as the padded stride-2 conv), each upsampling transposed convolution is
given the matching encoder size (``output_size``), and the final 2×2 one is
cropped to the input. Convolutions followed by BatchNorm have no bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.60
BN_EPS = 1e-3  # as the authors' code


class DownsamplerBlock(nn.Module):
    """3×3 stride-2 conv (out − in maps) ‖ 2×2 max-pool of the input, then BN and ReLU (ENet's initial block)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class NonBottleneck1D(nn.Module):
    """Residual block of two factorised 3×3 convs: 3×1, ReLU, 1×3, BN, ReLU, 3×1 (d), ReLU, 1×3 (d), BN, dropout.

    Only the second pair is dilated (by ``dilation`` along its own axis), so the
    first pair still sees every neighbouring pixel. The output is ReLU(x + branch).
    """

    def __init__(self, channels: int, dropout: float, dilation: int = 1) -> None:
        super().__init__()
        d = dilation
        self.conv3x1_1 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0))
        self.conv1x3_1 = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1), bias=False)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.conv3x1_2 = nn.Conv2d(channels, channels, (3, 1), padding=(d, 0), dilation=(d, 1))
        self.conv1x3_2 = nn.Conv2d(channels, channels, (1, 3), padding=(0, d), dilation=(1, d), bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1x3_1(F.relu(self.conv3x1_1(x)))))
        out = self.bn2(self.conv1x3_2(F.relu(self.conv3x1_2(out))))
        return F.relu(x + self.dropout(out))


class UpsamplerBlock(nn.Module):
    """3×3 stride-2 transposed conv, BN, ReLU; ``size`` picks the odd or even output size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x, output_size=size)))


class ERFNet(nn.Module):
    """ERFNet as in the paper's Table 1; ``forward`` returns ``{"out": logits at the input size}``.

    Spatial dropout: ``dropout`` in the 8 dilated encoder blocks (authors' code: 0.3),
    ``dropout_stage1`` in the 5 blocks at 1/4 resolution (0.03), none in the decoder.
    """

    def __init__(self, num_classes: int, dropout: float = 0.3, dropout_stage1: float = 0.03) -> None:
        super().__init__()
        self.down1 = DownsamplerBlock(3, 16)  # layer 1
        self.down2 = DownsamplerBlock(16, 64)  # layer 2
        self.stage1 = nn.Sequential(*(NonBottleneck1D(64, dropout_stage1) for _ in range(5)))  # layers 3–7
        self.down3 = DownsamplerBlock(64, 128)  # layer 8
        # layers 9–16: dilations 2, 4, 8, 16, twice
        self.stage2 = nn.Sequential(*(NonBottleneck1D(128, dropout, d) for d in (2, 4, 8, 16) * 2))
        self.up1 = UpsamplerBlock(128, 64)  # layer 17
        self.dec1 = nn.Sequential(NonBottleneck1D(64, 0.0), NonBottleneck1D(64, 0.0))  # layers 18–19
        self.up2 = UpsamplerBlock(64, 16)  # layer 20
        self.dec2 = nn.Sequential(NonBottleneck1D(16, 0.0), NonBottleneck1D(16, 0.0))  # layers 21–22
        self.output_conv = nn.ConvTranspose2d(16, num_classes, 2, stride=2)  # layer 23

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Size]]:
        """Layers 1–16: features at 1/8 resolution and the sizes at 1/2 and 1/4 for the decoder."""
        half = self.down1(x)
        quarter = self.stage1(self.down2(half))
        return self.stage2(self.down3(quarter)), [half.shape[-2:], quarter.shape[-2:]]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        x, (half, quarter) = self.encode(x)
        x = self.dec1(self.up1(x, quarter))
        x = self.dec2(self.up2(x, half))
        # the first downsampler gives ⌈H/2⌉; the 2×2 transposed conv gives 2⌈H/2⌉ ≥ H
        return {"out": self.output_conv(x)[..., :height, :width]}


# The paper gives layer sizes (Table 1) but, as far as we could check, no parameter count; 2.07M
# (cited as "2.1M" elsewhere) is the authors' code (Eromera/erfnet_pytorch, train/erfnet.py) at its
# Cityscapes setting NUM_CLASSES = 20 (19 + void): 2,066,836 parameters, of which 2,580 are the
# encoder-only 1×1 classifier used just for their encoder pre-training stage. Without it, and without
# the 3,213 biases that sit right before a BatchNorm (cancelled by it), we have 2,061,043: 0.43 % below
# 2.07M, inside the default 1 % tolerance. The exact counts are pinned in tests/test_models_erfnet.py.
@MODELS.register(
    "erfnet",
    paper_params=2.07e6,
    paper_kwargs={"num_classes": 20},
    output_stride=8,
    source="Romera et al. 2018 (IEEE T-ITS) Table 1; count of the authors' erfnet_pytorch Net(20)",
)
def erfnet(*, num_classes: int, dropout: float = 0.3, dropout_stage1: float = 0.03) -> ERFNet:
    """ERFNet (Romera et al. 2018); spatial-dropout rates of the dilated and the 1/4-resolution blocks."""
    for key, p in (("dropout", dropout), ("dropout_stage1", dropout_stage1)):
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"model.params.{key}: {p} is not a probability in [0, 1) for erfnet")
    return ERFNet(num_classes, dropout=dropout, dropout_stage1=dropout_stage1)
