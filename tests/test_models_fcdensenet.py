"""FC-DenseNet-specific tests: the paper's layer tables, exact parameter counts, odd sizes, training.

Big variants are built on the meta device only; real forwards use FC-DenseNet56 at ≤ 64 px.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.models import fcdensenet
from semseg.models.fcdensenet import FCDenseNet
from semseg.registry import MODELS
from tests.fixtures.training import fit


def _meta(name: str, num_classes: int = 11) -> FCDenseNet:
    with torch.device("meta"):
        return MODELS.build(name, num_classes=num_classes)


@pytest.mark.parametrize("name, depth", [("fcdensenet56", 56), ("fcdensenet67", 67), ("fcdensenet103", 103)])
def test_depth_is_the_number_of_convolutions(name: str, depth: int) -> None:
    """The name counts conv + transposed-conv layers (paper §3.3): 103 = 91 + 1 + 5 TD + 5 TU + 1."""
    model = _meta(name)
    assert sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules()) == depth


def test_fcdensenet103_feature_maps_match_table_2() -> None:
    """m after each block, paper Table 2 with the authors' +16 erratum for the up path (README)."""
    model = _meta("fcdensenet103")
    down = [b.out_channels for b in model.down_blocks]
    up = [b.out_channels for b in model.up_blocks]
    assert down == [112, 192, 304, 464, 656]
    assert model.bottleneck.out_channels == 896
    assert up == [1088, 816, 576, 384, 256]
    # a transition up only upsamples the new maps of the block below it
    new = [model.bottleneck.new_channels] + [b.new_channels for b in model.up_blocks[:-1]]
    assert [tu.up.in_channels for tu in model.transitions_up] == new == [240, 192, 160, 112, 80]


@pytest.mark.parametrize(
    "name, trainable, lasagne_m",
    [("fcdensenet56", 1_376_795, 1.4), ("fcdensenet67", 3_463_243, 3.5), ("fcdensenet103", 9_322_091, 9.4)],
)
def test_exact_parameter_counts(name: str, trainable: int, lasagne_m: float) -> None:
    """Pin the counts; Lasagne also counts BN running stats, which is how Table 2 rounds to 3.5/9.4M."""
    model = _meta(name)
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert params == trainable
    assert round((params + stats) / 1e6, 1) == lasagne_m


def test_tiny_and_odd_sizes_and_output_stride_32() -> None:
    model = MODELS.build("fcdensenet56", num_classes=4).eval()
    seen: list[tuple[int, int]] = []
    model.bottleneck.register_forward_hook(lambda m, i, o: seen.append(tuple(o[0].shape[-2:])))
    with torch.no_grad():
        for size in [(1, 1), (7, 33), (64, 63)]:
            assert model(torch.randn(1, 3, *size))["out"].shape == (1, 4, *size)
    assert seen == [(1, 1), (1, 1), (2, 1)]  # floor, a side of 1 stays 1: 33→16→8→4→2→1


@pytest.mark.parametrize("name", ["fcdensenet56", "fcdensenet103"])
def test_pools_floor_as_the_authors_at_360x480(name: str) -> None:
    """Lasagne Pool2DLayer(2) floors (ignore_border=True): at 360×480 the 1/16 map has 22 rows, not 23."""
    model = _meta(name)
    sizes: list[tuple[int, int]] = []
    for td in model.transitions_down:
        td.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    with torch.device("meta"):
        out = model(torch.empty(1, 3, 360, 480))["out"]
    assert sizes == [(180, 240), (90, 120), (45, 60), (22, 30), (11, 15)]
    assert out.shape == (1, 11, 360, 480)


def test_floor_pool_is_floor_mode_except_on_a_side_of_one() -> None:
    pool = fcdensenet.FloorMaxPool()
    for size in [(7, 9), (8, 8), (45, 61)]:
        x = torch.randn(2, 3, *size)
        torch.testing.assert_close(pool(x), F.max_pool2d(x, 2, 2, ceil_mode=False), rtol=0, atol=0)
    row = torch.randn(1, 2, 1, 7)
    torch.testing.assert_close(pool(row), F.max_pool2d(row, (1, 2), (1, 2)), rtol=0, atol=0)  # 1 × ⌊7/2⌋
    assert pool(torch.randn(1, 1, 1, 1)).shape[-2:] == (1, 1)


def test_transition_up_crops_like_the_lasagne_centre_crop() -> None:
    """Lasagne ConcatLayer(cropping='center') keeps rows (2n+1−S)//2 … : for S = 2n, 2n+1 that offset is 0."""
    tu = fcdensenet.TransitionUp(2)
    for n, skip in [(5, 10), (5, 11)]:
        new, s = torch.randn(1, 2, n, n), torch.randn(1, 3, skip, skip)
        full = tu.up(new)
        off = (full.shape[-1] - skip) // 2
        assert off == 0
        torch.testing.assert_close(tu(new, s)[:, :2], full[..., off : off + skip, off : off + skip])


def test_batchnorm_eps_is_lasagnes() -> None:
    """lasagne.layers.BatchNormLayer's default epsilon 1e-4 (the authors' layers.py keeps it); bn_eps changes it."""
    eps = {m.eps for m in _meta("fcdensenet103").modules() if isinstance(m, nn.BatchNorm2d)}
    assert eps == {1e-4}
    with torch.device("meta"):
        port = MODELS.build("fcdensenet67", num_classes=12, bn_eps=1e-5)
    assert {m.eps for m in port.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-5}
    with pytest.raises(ConfigError, match="model.params.bn_eps"):
        MODELS.build("fcdensenet56", num_classes=4, bn_eps=0.0)


def test_dropout_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.params.dropout"):
        MODELS.build("fcdensenet56", num_classes=4, dropout=1.0)


def test_a_few_adam_steps_reduce_the_loss() -> None:
    model = MODELS.build("fcdensenet56", num_classes=3, dropout=0.0).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    losses = fit(lambda: F.cross_entropy(model(x)["out"], y), opt, 5)
    assert losses[-1] < losses[0]
