"""ENet-specific tests: the paper's Table 1, exact parameter counts, odd sizes, unpooling indices, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.models.enet import ENet
from semseg.registry import MODELS
from tests.fixtures.training import fit


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))


def _meta(num_classes: int = 12) -> ENet:
    with torch.device("meta"):
        return MODELS.build("enet", num_classes=num_classes)


def _main_conv(block: nn.Module) -> list[nn.Conv2d]:
    """The convolutions between the two projections of an encoder bottleneck."""
    convs = [m for m in block.branch if isinstance(m, nn.Conv2d)]
    return convs[1:-1]


def test_stages_match_table_1() -> None:
    model = _meta()
    assert model.initial.conv.out_channels == 13 and model.initial.conv.stride == (2, 2)
    assert [(b.branch[0].in_channels, b.branch[-3].out_channels) for b in (model.down1, model.down2)] == [
        (16, 64),
        (64, 128),
    ]
    assert model.down1.branch[0].kernel_size == (2, 2) and model.down1.branch[0].stride == (2, 2)
    assert len(model.stage1) == 4 and len(model.stage4) == 2
    assert len(model.stage23) == 16  # 2.1–2.8 and 3.1–3.8
    kinds = []
    for block in model.stage23:
        main = _main_conv(block)
        kinds.append(f"asym{main[0].kernel_size[1]}" if len(main) == 2 else f"d{main[0].dilation[0]}")
        if len(main) == 2:  # width first, as the authors' encoder.lua (kW=5, kH=1, then kW=1, kH=5)
            assert [(c.kernel_size, c.padding) for c in main] == [((1, 5), (0, 2)), ((5, 1), (2, 0))]
    assert kinds == ["d1", "d2", "asym5", "d4", "d1", "d8", "asym5", "d16"] * 2
    assert (model.up4.shortcut[0].in_channels, model.up4.shortcut[0].out_channels) == (128, 64)
    assert (model.up5.shortcut[0].in_channels, model.up5.shortcut[0].out_channels) == (64, 16)
    assert model.fullconv.kernel_size == (2, 2) and model.fullconv.out_channels == 12


def test_projection_ratio_dropout_prelu_and_no_bias() -> None:
    model = _meta()
    blocks = [model.down1, *model.stage1, model.down2, *model.stage23, *model.stage4, model.stage5]
    for block in blocks:
        out = block.branch[-3].out_channels
        assert block.branch[0].out_channels == out // 4
    rates = [b.branch[-1].p for b in blocks]
    assert rates == [0.01] * 5 + [0.1] * 20  # paper §3: 0.01 before bottleneck2.0, 0.1 afterwards
    assert all(isinstance(b.branch[-1], nn.Dropout2d) for b in blocks)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    biased = [n for n, m in model.named_modules() if _is_conv(m) and m.bias is not None]
    assert biased == ["fullconv"]


def test_exact_parameter_count() -> None:
    """Pin our count; with BN running statistics it rounds to the paper's 0.37M (Table 3)."""
    model = _meta(12)
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert params == 363_499
    assert round((params + stats) / 1e6, 2) == 0.37


def test_odd_sizes_and_output_stride_8() -> None:
    model = MODELS.build("enet", num_classes=4).eval()
    encoded: list[tuple[int, int]] = []
    model.stage23[-1].register_forward_hook(lambda m, i, o: encoded.append(tuple(o[0].shape[-2:])))
    sizes = [(1, 1), (3, 5), (45, 61), (64, 63)]
    with torch.no_grad():
        for size in sizes:
            assert model(torch.randn(1, 3, *size))["out"].shape == (1, 4, *size)
    assert encoded == [tuple(math.ceil(s / 8) for s in size) for size in sizes]


def test_camvid_size_with_odd_rows() -> None:
    model = MODELS.build("enet", num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 361, 479))["out"].shape == (1, 4, 361, 479)


def test_decoder_unpools_at_the_encoder_max_locations() -> None:
    model = MODELS.build("enet", num_classes=4).eval()
    seen: dict[str, torch.Tensor] = {}
    model.down1.pool.register_forward_hook(lambda m, i, o: seen.update(indices=o[1]))
    model.up5.unpool.register_forward_hook(lambda m, i, o: seen.update(unpooled=o))
    with torch.no_grad():
        model(torch.randn(1, 3, 45, 61))
    unpooled, indices = seen["unpooled"], seen["indices"]
    assert unpooled.shape[-2:] == (23, 31)  # the pre-pool size, odd
    expected = torch.zeros_like(unpooled).flatten(2).scatter_(2, indices.flatten(2), 1.0).view_as(unpooled)
    assert torch.equal(unpooled != 0, expected.bool())


def test_dropout_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.params.dropout"):
        MODELS.build("enet", num_classes=4, dropout=1.5)


def test_a_few_adam_steps_reduce_the_loss() -> None:
    model = MODELS.build("enet", num_classes=3, dropout=0.0, dropout_stage1=0.0).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    x, y = torch.randn(2, 3, 24, 24), torch.randint(0, 3, (2, 24, 24))
    losses = fit(lambda: F.cross_entropy(model(x)["out"], y), opt, 5)
    assert losses[-1] < losses[0]
