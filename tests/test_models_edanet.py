"""EDANet tests: dense growth (channels after every module), the dilation table, downsampling modes, counts, any size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semseg.errors import ConfigError
from semseg.models import edanet
from semseg.models.edanet import EDAModule, EDANet
from semseg.registry import MODELS
from tests.fixtures.training import fit


def _meta(num_classes: int = 19, **kwargs: object) -> EDANet:
    with torch.device("meta"):
        return MODELS.build("edanet", num_classes=num_classes, **kwargs)


def test_dense_growth_matches_the_layer_table() -> None:
    """"# Output channels" of models/EDANet.PNG: +40 per module, 60 → 260 at 1/4 and 130 → 450 at 1/8."""
    model = _meta()
    assert [m.out_channels for m in model.block1] == [100, 140, 180, 220, 260]
    assert [m.out_channels for m in model.block2] == [170, 210, 250, 290, 330, 370, 410, 450]
    assert [m.conv1x1.in_channels for m in model.block1] == [60, 100, 140, 180, 220]
    assert [m.conv1x1.in_channels for m in model.block2] == [130, 170, 210, 250, 290, 330, 370, 410]
    assert {m.conv1x1.out_channels for m in (*model.block1, *model.block2)} == {40}
    assert model.project.in_channels == 450 and model.project.out_channels == 19
    narrow = _meta(growth_rate=8)
    assert [m.out_channels for m in narrow.block1][-1] == 100 and narrow.down3.conv.in_channels == 100
    assert narrow.project.in_channels == 130 + 8 * 8


def test_dilations_are_the_tables() -> None:
    model = _meta()
    second = [m.conv3x1_2.dilation[0] for m in (*model.block1, *model.block2)]
    assert second == [1, 1, 1, 2, 2] + [2, 2, 4, 4, 8, 8, 16, 16]
    assert [m.conv1x3_2.dilation for m in model.block2] == [(1, d) for d in (2, 2, 4, 4, 8, 8, 16, 16)]
    assert [m.conv3x1_2.padding for m in model.block2] == [(d, 0) for d in (2, 2, 4, 4, 8, 8, 16, 16)]
    first = {(m.conv3x1_1.dilation, m.conv1x3_1.dilation) for m in (*model.block1, *model.block2)}
    assert first == {((1, 1), (1, 1))}  # the first asymmetric pair is never dilated
    assert {m.conv3x1_1.kernel_size for m in model.block2} == {(3, 1)}
    assert {m.conv1x3_1.kernel_size for m in model.block2} == {(1, 3)}


def test_downsampling_blocks_concatenate_a_pool_only_when_widening() -> None:
    model = _meta()
    d1, d2, d3 = model.down1, model.down2, model.down3
    assert (d1.conv.in_channels, d1.conv.out_channels, d1.bn.num_features) == (3, 12, 15)  # 12 conv ‖ 3 pooled
    assert (d2.conv.in_channels, d2.conv.out_channels, d2.bn.num_features) == (15, 45, 60)
    assert d3.pool is None and (d3.conv.in_channels, d3.conv.out_channels) == (260, 130)  # Win > Wout: conv only
    assert d1.pool is not None and d2.pool is not None


def test_module_keeps_its_input_and_adds_k_maps() -> None:
    block = EDAModule(12, dilation=4, growth_rate=5).eval()
    x = torch.randn(2, 12, 9, 11)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (2, 17, 9, 11)
    torch.testing.assert_close(out[:, :12], x, rtol=0, atol=0)  # dense connectivity: the input passes untouched
    assert (out[:, 12:] >= 0).all()  # the new maps come out of a ReLU (dropout only zeroes them)
    assert block.dropout.p == edanet.DROPOUT == 0.02


def test_exact_parameter_counts() -> None:
    def count(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    per_module = lambda n: 40 * n + 4 * 3 * 40 * 40 + 3 * 2 * 40  # 1×1, four 3-taps, three BNs
    down = (9 * 3 * 12 + 2 * 15) + (9 * 15 * 45 + 2 * 60) + (9 * 260 * 130 + 2 * 130)
    trunk = down + sum(per_module(60 + 40 * i) for i in range(5)) + sum(per_module(130 + 40 * i) for i in range(8))
    assert trunk == 678_129
    for classes in (19, 11):
        assert count(_meta(classes)) == trunk + 450 * classes + classes
    assert count(_meta(19)) == 686_698  # registered against the paper's 0.68M
    biases_before_bn = 13 * 5 * 40 + (12 + 45 + 130)
    assert count(_meta(19)) + biases_before_bn == 689_485  # a reimplementation that keeps them


def test_strides_at_an_odd_size_and_bilinear_output() -> None:
    model = MODELS.build("edanet", num_classes=6).eval()
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        half = model.down1(x)
        quarter = model.block1(model.down2(half))
        eighth = model.features(x)
        out = model(x)["out"]
        expected = F.interpolate(model.project(eighth), size=(45, 61), mode="bilinear", align_corners=False)
    assert half.shape[1:] == (15, 23, 31) and quarter.shape[1:] == (260, 12, 16) and eighth.shape[1:] == (450, 6, 8)
    torch.testing.assert_close(out, expected)
    assert MODELS.meta("edanet")["output_stride"] == 8


def test_bad_params_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.params.dropout"):
        MODELS.build("edanet", num_classes=4, dropout=1.0)
    with pytest.raises(ConfigError, match="model.params.growth_rate"):
        MODELS.build("edanet", num_classes=4, growth_rate=0)


def test_a_few_adam_steps_fit_a_batch() -> None:
    torch.manual_seed(0)
    model = MODELS.build("edanet", num_classes=5).train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = fit(lambda: F.cross_entropy(model(x)["out"], y), opt, 10)
    assert losses[-1] < 0.9 * losses[0], losses
