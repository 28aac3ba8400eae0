"""EDANet: Efficient Dense modules of Asymmetric convolution for real-time semantic segmentation.

Lo, Hang, Chan and Lin, "Efficient Dense Modules of Asymmetric Convolution for Real-Time Semantic
Segmentation", ACM Multimedia Asia 2019 (arXiv:1809.06323). The authors could not release their
PyTorch code; their repository (shaoyuanlo/EDANet) publishes the layer table instead
(``models/EDANet.PNG``: channels, dilations and output sizes of every block), the EDA module and the
downsampling block as diagrams (``models/EDA_module.PNG``, ``models/downsampling_block.PNG``) and
the training setup (``train/train.PNG``, ``train/class_weights_*.PNG``). Those are what this file
follows.

EDANet has no decoder and no context module: two ENet-style downsampling blocks bring the image to
1/4, five EDA modules work there, a third downsampling block halves it to 1/8 and eight more EDA
modules follow, with dilations growing 2, 2, 4, 4, 8, 8, 16, 16. An EDA module is a 1×1
bottleneck to ``k`` = 40 maps and two asymmetric pairs (3×1 then 1×3; the second pair dilated), and
its 40 new maps are *concatenated* to its input, as in DenseNet, so every module sees every earlier
one and the block's output carries features at every receptive field it built. A 1×1 projection
scores the 450 maps at 1/8 and bilinear ×8 upsampling returns to the input size.

Changes, all for arbitrary input sizes or documented in doc/edanet.md: the 2×2 max-pool of a
downsampling block uses ``ceil_mode=True`` (the same ⌈H/2⌉ as the padded stride-2 conv), and the
final upsampling resizes to the input's exact H×W instead of multiplying by 8. Convolutions
followed by BatchNorm have no bias (BN cancels it). The authors' inference-only second ×2
(1024×2048 Cityscapes labels from a 512×1024 input) is the evaluation's business, not the model's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.models._blocks import resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 1.60

GROWTH_RATE = 40  # k, new maps per EDA module (layer table, "Growth rate" column)
DROPOUT = 0.02  # the paper's rate; after the module's last BN + ReLU, before the concatenation (EDA_module.PNG)
# Dilation of the second asymmetric pair, per module (layer table: "dilation 2" etc.; no entry = 1).
DILATIONS_BLOCK1 = (1, 1, 1, 2, 2)  # EDA modules 1-1 … 1-5, at 1/4
DILATIONS_BLOCK2 = (2, 2, 4, 4, 8, 8, 16, 16)  # EDA modules 2-1 … 2-8, at 1/8
# Output channels of the three downsampling blocks (layer table): 15 and 60 (Win < Wout: conv ‖ pool), 130 (conv only).
DOWN_CHANNELS = (15, 60, 130)


class DownsamplingBlock(nn.Module):
    """3×3 stride-2 conv, concatenated with a 2×2 max-pool of the input when it has fewer maps than the output.

    With ``in < out`` (blocks 1, 2) the conv gives ``out − in`` maps and the pool the other ``in``, as
    ENet's initial block; with ``in ≥ out`` (block 3: 260 → 130) the conv alone gives ``out``. BN, ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True) if in_channels < out_channels else None
        conv_out = out_channels - in_channels if self.pool is not None else out_channels
        self.conv = nn.Conv2d(in_channels, conv_out, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.pool is not None:
            out = torch.cat([out, self.pool(x)], dim=1)
        return F.relu(self.bn(out))


class EDAModule(nn.Module):
    """1×1 → BN, ReLU → 3×1, 1×3 → BN, ReLU → 3×1 (d), 1×3 (d) → BN, ReLU → dropout; output ``[x, new]``.

    The module adds ``growth_rate`` maps to its input (dense connectivity): ``out_channels = in + k``.
    Only the second asymmetric pair is dilated, each convolution along its own axis.
    """

    def __init__(self, in_channels: int, dilation: int, growth_rate: int = GROWTH_RATE, dropout: float = DROPOUT) -> None:
        super().__init__()
        k, d = growth_rate, dilation
        self.out_channels = in_channels + k
        self.conv1x1 = nn.Conv2d(in_channels, k, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(k)
        self.conv3x1_1 = nn.Conv2d(k, k, (3, 1), padding=(1, 0), bias=False)
        self.conv1x3_1 = nn.Conv2d(k, k, (1, 3), padding=(0, 1), bias=False)
        self.bn1 = nn.BatchNorm2d(k)
        self.conv3x1_2 = nn.Conv2d(k, k, (3, 1), padding=(d, 0), dilation=(d, 1), bias=False)
        self.conv1x3_2 = nn.Conv2d(k, k, (1, 3), padding=(0, d), dilation=(1, d), bias=False)
        self.bn2 = nn.BatchNorm2d(k)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn0(self.conv1x1(x)))
        out = F.relu(self.bn1(self.conv1x3_1(self.conv3x1_1(out))))
        out = F.relu(self.bn2(self.conv1x3_2(self.conv3x1_2(out))))
        return torch.cat([x, self.dropout(out)], dim=1)


def _eda_block(in_channels: int, dilations: Sequence[int], growth_rate: int, dropout: float) -> nn.Sequential:
    modules = []
    for d in dilations:
        modules.append(EDAModule(in_channels, d, growth_rate, dropout))
        in_channels = modules[-1].out_channels
    return nn.Sequential(*modules)


class EDANet(nn.Module):
    """EDANet as in the authors' layer table; ``forward`` returns ``{"out": logits at the input size}``."""

    def __init__(
        self,
        num_classes: int,
        growth_rate: int = GROWTH_RATE,
        dropout: float = DROPOUT,
        dilations: tuple[Sequence[int], Sequence[int]] = (DILATIONS_BLOCK1, DILATIONS_BLOCK2),
    ) -> None:
        super().__init__()
        c1, c2, c3 = DOWN_CHANNELS
        self.down1 = DownsamplingBlock(3, c1)  # 1/2
        self.down2 = DownsamplingBlock(c1, c2)  # 1/4
        self.block1 = _eda_block(c2, dilations[0], growth_rate, dropout)  # 60 → 260
        self.down3 = DownsamplingBlock(c2 + growth_rate * len(dilations[0]), c3)  # 1/8
        self.block2 = _eda_block(c3, dilations[1], growth_rate, dropout)  # 130 → 450
        self.project = nn.Conv2d(c3 + growth_rate * len(dilations[1]), num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 450 maps at 1/8 (⌈H/8⌉×⌈W/8⌉) that the projection layer scores."""
        return self.block2(self.down3(self.block1(self.down2(self.down1(x)))))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # the paper's "×8 bilinear interpolation", to the exact input size (⌈H/8⌉·8 may exceed H)
        return {"out": resize_to(self.project(self.features(x)), x.shape[-2:])}


# The paper's 0.68M (its comparison tables) is the architecture above: 678,129 parameters before the
# projection layer, 686,698 with the 19-class Cityscapes projection (450·19 + 19), which the paper
# rounds down (0.69M rounded to nearest; 0.98 % above 0.68M, inside the default 1 % tolerance). With
# the biases a PyTorch reimplementation would keep before each BN (13 modules × 5 convs × 40 + 187
# in the downsampling blocks, cancelled by BN) the count is 689,485. Pinned in tests/test_models_edanet.py.
@MODELS.register(
    "edanet",
    paper_params=0.68e6,
    paper_kwargs={"num_classes": 19},
    output_stride=8,
    paper_camvid_miou=(66.4, "Lo et al. 2019, arXiv:1809.06323, CamVid results table (test split, 360×480)"),
    paper_cityscapes_miou=(67.3, "Lo et al. 2019, arXiv:1809.06323 (test set; 67.32 on the server, authors' README)"),
    source="Lo et al. 2019, arXiv:1809.06323 (0.68M); layer table of shaoyuanlo/EDANet models/EDANet.PNG",
)
def edanet(*, num_classes: int, growth_rate: int = GROWTH_RATE, dropout: float = DROPOUT) -> EDANet:
    """EDANet (Lo et al. 2019): growth rate ``k`` of the EDA modules and their spatial-dropout rate."""
    if growth_rate < 1:
        raise ConfigError(f"model.params.growth_rate: {growth_rate} is not a positive number of maps for edanet")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.params.dropout: {dropout} is not a probability in [0, 1) for edanet")
    return EDANet(num_classes, growth_rate=growth_rate, dropout=dropout)
