"""DUC-HDC-specific tests: the released HDC rates, no gridding, stride 8, depth-to-space, parameter count.

ResNet-101 is only built on the meta device (shape-only forward passes); the SGD test
trains a DUC head on features of a real ResNet-50 trunk computed once.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semseg.errors import ConfigError
from semseg.models import duc
from semseg.registry import MODELS
from tests.fixtures.training import fit

# Per-block 3×3 dilation of the released ResNet-101-DUC-HDC (TuSimple/TuSimple-DUC,
# tusimple_duc/networks/resnet.py: res4a, res4b1 … res4b22, then res5a–c).
RELEASED_LAYER3 = [2, 2, 5, 9] + [1, 2, 5, 9] * 4 + [1, 2, 5]
RELEASED_LAYER4 = [5, 9, 17]
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}  # He et al. 2016, Table 1


def _rates(layer: torch.nn.Sequential) -> list[int]:
    for block in layer:
        assert block.conv2.padding == block.conv2.dilation and block.conv2.stride == (1, 1)
    return [block.conv2.dilation[0] for block in layer]


def _covered(rates: list[int]) -> set[int]:
    """1-D input offsets reached by a stack of 3-tap convolutions with these dilations."""
    reach = {0}
    for r in rates:
        reach = {p + k * r for p in reach for k in (-1, 0, 1)}
    return reach


def test_hdc_rates_are_the_released_ones() -> None:
    with torch.device("meta"):
        model = MODELS.build("duc_hdc_resnet101", num_classes=4)
    assert len(RELEASED_LAYER3) == 23
    assert _rates(model.backbone.layer3) == RELEASED_LAYER3
    assert _rates(model.backbone.layer4) == RELEASED_LAYER4
    assert duc.hdc_rates(6) == [2, 2, 5, 9, 1, 2]  # ResNet-50's six layer3 blocks


def test_hdc_has_no_gridding_but_plain_dilation_does() -> None:
    """HDC's point (§3.2): the stacked dilated convs leave no holes in the receptive field."""
    hdc = _covered(RELEASED_LAYER3 + RELEASED_LAYER4)
    assert hdc == set(range(min(hdc), max(hdc) + 1))
    plain = _covered([2] * 23 + [4] * 3)  # DeepLab/PSPNet-style dilation 2 then 4
    assert plain != set(range(min(plain), max(plain) + 1))  # only even offsets: a grid


@pytest.mark.parametrize("name", ["duc_hdc_resnet101", "duc_hdc_resnet50"])
def test_output_stride_8(name: str) -> None:
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=4)
        x = torch.empty(1, 3, 45, 61)
        feats = model.backbone(x)
        scores = model.duc(feats["layer4"])
        out = model(x)["out"]
    assert MODELS.meta(name)["output_stride"] == duc.UPSCALE == 8
    assert feats["layer4"].shape[1:] == (2048, 6, 8)  # ⌈45/8⌉, ⌈61/8⌉
    assert scores.shape[-2:] == (48, 64) and out.shape == (1, 4, 45, 61)  # 8·⌈·/8⌉, cropped


def test_duc_is_depth_to_space() -> None:
    """Channel c·r² + a·r + b of cell (i, j) is class c at output pixel (r·i + a, r·j + b) (§3.1)."""
    head = duc.DenseUpsamplingConv(4, 2, upscale=8, rates=(1, 3))
    x = torch.randn(1, 4, 3, 5)
    with torch.no_grad():
        summed = head.branches[0](x) + head.branches[1](x)
        out = head(x)
    assert summed.shape == (1, 2 * 64, 3, 5) and out.shape == (1, 2, 24, 40)
    c, a, b, i, j = 1, 5, 2, 2, 3
    torch.testing.assert_close(out[0, c, 8 * i + a, 8 * j + b], summed[0, c * 64 + a * 8 + b, i, j])
    assert [conv.dilation[0] for conv in head.branches] == [conv.padding[0] for conv in head.branches] == [1, 3]


def _trunk(depth: int) -> int:
    """Bottleneck ResNet trunk (7×7 stem, no fc) from the architecture table; BN = 2 per channel."""
    total, c_in = 49 * 3 * 64 + 2 * 64, 64
    for width, blocks in zip((64, 128, 256, 512), BLOCKS[depth]):
        out = 4 * width
        for i in range(blocks):
            total += c_in * width + 9 * width * width + width * out + 2 * (2 * width + out)
            total += (c_in * out + 2 * out) if i == 0 else 0
            c_in = out
    return total


@pytest.mark.parametrize("name", ["duc_hdc_resnet101", "duc_hdc_resnet50"])
def test_param_count_is_the_derivation(name: str) -> None:
    classes = MODELS.meta(name)["paper_kwargs"]["num_classes"]
    head = 4 * (2048 * 9 + 1) * 64 * classes  # four 3×3 ASPP branches with bias → C·8² each
    expected = _trunk(101 if "101" in name else 50) + head
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=classes)
        single = MODELS.build(name, num_classes=classes, aspp_rates=[1])
    assert sum(p.numel() for p in model.parameters()) == expected == MODELS.meta(name)["paper_params"]
    assert sum(p.numel() for p in single.parameters()) == expected - 3 * head // 4


@pytest.mark.parametrize("rates", [[], [0], [6, -1], [1.5], [True]])
def test_bad_aspp_rates_are_a_config_error(rates: list) -> None:
    with torch.device("meta"), pytest.raises(ConfigError, match="model.params.aspp_rates"):
        MODELS.build("duc_hdc_resnet50", num_classes=4, aspp_rates=rates)


def test_sgd_on_the_duc_head_reduces_the_loss() -> None:
    """The trunk runs once (frozen, train-mode BN); a few SGD steps on the head fit a tiny batch."""
    model = MODELS.build("duc_hdc_resnet50", num_classes=3, aspp_rates=[6, 12]).train()
    x = torch.randn(2, 3, 40, 40)
    y = torch.randint(0, 3, (2, 10, 10)).repeat_interleave(4, 1).repeat_interleave(4, 2)  # 4×4 cells
    with torch.no_grad():
        feats = model.backbone(x)["layer4"]
    opt = torch.optim.SGD(model.duc.parameters(), lr=0.1, momentum=0.9)
    losses = fit(lambda: F.cross_entropy(model.duc(feats)[..., :40, :40], y), opt, 5)
    assert losses[-1] < 0.9 * losses[0], losses
