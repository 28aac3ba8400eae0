"""ERFNet-specific tests: the paper's Table 1, parameter counts against the authors' code, odd sizes, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.models.erfnet import ERFNet, NonBottleneck1D
from semseg.registry import MODELS
from tests.fixtures.training import fit


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))


def _meta(num_classes: int = 20) -> ERFNet:
    with torch.device("meta"):
        return MODELS.build("erfnet", num_classes=num_classes)


def _authors_count(num_classes: int) -> int:
    """Parameters of the authors' erfnet_pytorch ``Net``, from its layer sizes (every conv has a bias)."""

    def block(c: int) -> int:  # four 3-tap convs with bias + two BNs
        return 4 * (3 * c * c + c) + 2 * 2 * c

    def down(i: int, o: int) -> int:  # 3×3 conv to o − i maps + BN(o)
        return 9 * i * (o - i) + (o - i) + 2 * o

    def up(i: int, o: int) -> int:  # 3×3 transposed conv + BN(o)
        return 9 * i * o + o + 2 * o

    encoder = down(3, 16) + down(16, 64) + 5 * block(64) + down(64, 128) + 8 * block(128)
    decoder = up(128, 64) + 2 * block(64) + up(64, 16) + 2 * block(16) + (4 * 16 * num_classes + num_classes)
    encoder_only_classifier = 128 * num_classes + num_classes
    return encoder + decoder + encoder_only_classifier


def test_layers_match_table_1() -> None:
    model = _meta()
    downs = [(m.conv.in_channels, m.bn.num_features) for m in (model.down1, model.down2, model.down3)]
    assert downs == [(3, 16), (16, 64), (64, 128)]
    assert [b.conv3x1_1.in_channels for b in model.stage1] == [64] * 5
    assert [b.conv3x1_2.dilation[0] for b in model.stage2] == [2, 4, 8, 16, 2, 4, 8, 16]
    assert [b.conv1x3_2.dilation[1] for b in model.stage2] == [2, 4, 8, 16, 2, 4, 8, 16]
    assert [b.conv3x1_2.dilation[0] for b in model.stage1] == [1] * 5
    assert (model.up1.conv.in_channels, model.up1.conv.out_channels) == (128, 64)
    assert (model.up2.conv.in_channels, model.up2.conv.out_channels) == (64, 16)
    assert [b.bn1.num_features for b in (*model.dec1, *model.dec2)] == [64, 64, 16, 16]
    assert model.output_conv.kernel_size == (2, 2) and model.output_conv.stride == (2, 2)
    blocks = [m for m in model.modules() if isinstance(m, NonBottleneck1D)]
    assert len(blocks) == 17  # 5 + 8 encoder, 2 + 2 decoder
    assert [b.dropout.p for b in blocks] == [0.03] * 5 + [0.3] * 8 + [0.0] * 4


def test_no_bias_right_before_batchnorm() -> None:
    biased = {n for n, m in _meta().named_modules() if _is_conv(m) and m.bias is not None}
    assert all(n.endswith(("conv3x1_1", "conv3x1_2")) for n in biased - {"output_conv"})
    assert "output_conv" in biased and len(biased) == 2 * 17 + 1


@pytest.mark.parametrize("num_classes", [20, 11])
def test_parameter_count_against_the_authors_code(num_classes: int) -> None:
    model = _meta(num_classes)
    ours = sum(p.numel() for p in model.parameters())
    dropped_biases = sum(
        m.out_channels for m in model.modules() if _is_conv(m) and m.bias is None
    )
    classifier = 128 * num_classes + num_classes  # the authors' encoder-only 1×1 conv, unused here
    assert dropped_biases == 3213
    assert ours + dropped_biases + classifier == _authors_count(num_classes)
    if num_classes == 20:
        assert (ours, _authors_count(20)) == (2_061_043, 2_066_836)


def test_odd_sizes_and_output_stride_8() -> None:
    model = MODELS.build("erfnet", num_classes=4).eval()
    encoded: list[tuple[int, int]] = []
    model.stage2.register_forward_hook(lambda m, i, o: encoded.append(tuple(o.shape[-2:])))
    sizes = [(1, 1), (3, 5), (45, 61), (64, 63)]
    with torch.no_grad():
        for size in sizes:
            assert model(torch.randn(1, 3, *size))["out"].shape == (1, 4, *size)
    assert encoded == [tuple(math.ceil(s / 8) for s in size) for size in sizes]


def test_decoder_upsamples_to_the_encoder_sizes() -> None:
    model = MODELS.build("erfnet", num_classes=4).eval()
    sizes: list[tuple[int, int]] = []
    for up in (model.up1, model.up2):
        up.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        model(torch.randn(1, 3, 45, 61))
    assert sizes == [(12, 16), (23, 31)]  # ⌈45/4⌉×⌈61/4⌉, ⌈45/2⌉×⌈61/2⌉


def test_dropout_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.params.dropout_stage1"):
        MODELS.build("erfnet", num_classes=4, dropout_stage1=-0.1)


def test_a_few_adam_steps_reduce_the_loss() -> None:
    model = MODELS.build("erfnet", num_classes=3, dropout=0.0, dropout_stage1=0.0).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    x, y = torch.randn(2, 3, 24, 24), torch.randint(0, 3, (2, 24, 24))
    losses = fit(lambda: F.cross_entropy(model(x)["out"], y), opt, 5)
    assert losses[-1] < losses[0]
