"""DUC-HDC-specific tests: the released HDC rates and head, no gridding, stride 8, depth-to-space, parameter count.

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
    assert scores.shape[-2:] == (24, 32) and out.shape == (1, 4, 45, 61)  # 4·⌈·/8⌉ at 1/2, ×2, cropped


def test_head_is_the_released_one() -> None:
    """Released configs: cell_width 2, so cell_cap (8/2)² = 16 channels per class, shuffled ×4 to 1/2."""
    with torch.device("meta"):
        model = MODELS.build("duc_hdc_resnet50", num_classes=19)
        full = MODELS.build("duc_hdc_resnet50", num_classes=19, cell_width=1)
    assert model.cell_width == 2 and model.align_corners is False  # cv.resize INTER_LINEAR: half-pixel
    assert [tuple(c.weight.shape) for c in model.duc.branches] == [(16 * 19, 2048, 3, 3)] * 4
    assert model.duc.shuffle.upscale_factor == 4 and full.duc.shuffle.upscale_factor == 8
    head = sum(p.numel() for p in model.duc.parameters())
    assert head == 4 * (2048 * 9 + 1) * 16 * 19 == 22_414_528
    assert sum(p.numel() for p in full.duc.parameters()) == 4 * head  # the paper's C·64 head: 4× the release's


def _released_rearrange(scores: torch.Tensor, classes: int, r: int) -> torch.Tensor:
    """tusimple_duc/test/predictor.py: reshape (C, r, r, h, w), transpose (0, 3, 1, 4, 2), reshape (C, r·h, r·w)."""
    _, h, w = scores.shape
    return scores.reshape(classes, r, r, h, w).permute(0, 3, 1, 4, 2).reshape(classes, r * h, r * w)


def test_forward_is_the_released_prediction() -> None:
    """Summed ASPP scores, rearranged as the predictor does, then a half-pixel bilinear ×2 (cv INTER_LINEAR)."""
    model = duc.DUCHDC(50, 3, aspp_rates=(1, 2)).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        feats = model.backbone(x)["layer4"]
        summed = model.duc.branches[0](feats) + model.duc.branches[1](feats)
        out = model(x)["out"][0]
    half = _released_rearrange(summed[0], 3, 4)  # 32 × 24: the 1/2-resolution map
    assert half.shape == (3, 32, 24) and out.shape == (3, 64, 48)
    # half-pixel bilinear ×2: output row 2i+1 is ¾ of input row i and ¼ of row i+1 (interior, both axes)
    i, j = 5, 7
    rows = 0.75 * half[:, i] + 0.25 * half[:, i + 1]
    expected = 0.75 * rows[:, j] + 0.25 * rows[:, j + 1]
    torch.testing.assert_close(out[:, 2 * i + 1, 2 * j + 1], expected)
    rows = 0.25 * half[:, i - 1] + 0.75 * half[:, i]  # and row 2i is ¼ of row i-1 and ¾ of row i
    expected = 0.25 * rows[:, j - 1] + 0.75 * rows[:, j]
    torch.testing.assert_close(out[:, 2 * i, 2 * j], expected)


@pytest.mark.parametrize("cell_width", [0, 3, 16, True])
def test_bad_cell_width_is_a_config_error(cell_width: int) -> None:
    with torch.device("meta"), pytest.raises(ConfigError, match="model.params.cell_width"):
        MODELS.build("duc_hdc_resnet50", num_classes=4, cell_width=cell_width)


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


def _released_trunk(depth: int) -> int:
    """The released MXNet trunk (tusimple_duc/networks/resnet.py): deep 3×3 stem 64-64-128, bottleneck
    groups 2-5 (He et al. 2016, Table 1), convs without bias, BN with γ and β (fix_gamma False)."""
    total = 3 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + 2 * (64 + 64 + 128)
    c_in = 128
    for width, blocks in zip((64, 128, 256, 512), BLOCKS[depth]):
        out = 4 * width
        for i in range(blocks):
            total += c_in * width + 9 * width * width + width * out + 2 * (2 * width + out)
            total += (c_in * out + 2 * out) if i == 0 else 0
            c_in = out
    return total


def _released_head(classes: int, aspp_num: int = 4, ds_rate: int = 8, cell_width: int = 2) -> int:
    """network_duc_hdc.py: aspp_num biased 3×3 convs 2048 → cell_cap·C, cell_cap = (ds_rate/cell_width)²."""
    cell_cap = (ds_rate // cell_width) ** 2
    return aspp_num * (2048 * 9 * cell_cap * classes + cell_cap * classes)


@pytest.mark.parametrize("name", ["duc_hdc_resnet101", "duc_hdc_resnet50"])
def test_param_count_is_the_released_models(name: str) -> None:
    """The registered figure is the release's count; ours differs only by torchvision's 7×7 stem."""
    classes = MODELS.meta(name)["paper_kwargs"]["num_classes"]
    released = _released_trunk(101 if "101" in name else 50) + _released_head(classes)
    assert MODELS.meta(name)["paper_params"] == released
    # deep stem (112,832) + layer1's first block taking 128 instead of 64 channels, minus the 7×7 stem
    stem_gap = (3 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + 2 * 256) + 64 * 64 + 64 * 256 - (49 * 3 * 64 + 2 * 64)
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=classes)
        single = MODELS.build(name, num_classes=classes, aspp_rates=[1])
    ours = sum(p.numel() for p in model.parameters())
    assert stem_gap == 123_776 and ours == released - stem_gap
    head = _released_head(classes)
    assert sum(p.numel() for p in single.parameters()) == ours - 3 * head // 4


@pytest.mark.parametrize("rates", [[], [0], [6, -1], [1.5], [True]])
def test_bad_aspp_rates_are_a_config_error(rates: list) -> None:
    with torch.device("meta"), pytest.raises(ConfigError, match="model.params.aspp_rates"):
        MODELS.build("duc_hdc_resnet50", num_classes=4, aspp_rates=rates)


def test_sgd_on_the_duc_head_reduces_the_loss() -> None:
    """The trunk runs once (frozen, train-mode BN); a few SGD steps on the head fit a tiny batch."""
    model = MODELS.build("duc_hdc_resnet50", num_classes=3, aspp_rates=[6, 12]).train()
    x = torch.randn(2, 3, 40, 40)
    y = torch.randint(0, 3, (2, 5, 5)).repeat_interleave(4, 1).repeat_interleave(4, 2)  # 4×4 cells at 1/2
    with torch.no_grad():
        feats = model.backbone(x)["layer4"]
    opt = torch.optim.SGD(model.duc.parameters(), lr=0.02, momentum=0.9)
    losses = fit(lambda: F.cross_entropy(model.duc(feats), y), opt, 5)
    assert losses[-1] < 0.9 * losses[0], losses
