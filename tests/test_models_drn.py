"""DRN-specific tests: the official layer table, stride 8, the frozen bilinear upsampler, weight loading.

Only DRN-D-22 (16M parameters) is run on real tensors, at ≤ 64 px; the larger
variants are built on the meta device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semseg.models._backbones as backbones
from semseg.errors import ConfigError
from semseg.models import drn
from semseg.models._blocks import bilinear_kernel
from semseg.registry import MODELS
from tests.fixtures.training import fit

# Blocks per level 1-8, from the official drn.py builders (fyu/drn).
OFFICIAL_LAYERS = {
    "drn_c_26": (1, 1, 2, 2, 2, 2, 1, 1),
    "drn_c_42": (1, 1, 3, 4, 6, 3, 1, 1),
    "drn_d_22": (1, 1, 2, 2, 2, 2, 1, 1),
    "drn_d_38": (1, 1, 3, 4, 6, 3, 1, 1),
    "drn_d_54": (1, 1, 3, 4, 6, 3, 1, 1),
    "drn_d_105": (1, 1, 3, 4, 23, 3, 1, 1),
}
OFFICIAL_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)  # drn.py DRN(channels=...)
OFFICIAL_DILATIONS = (1, 1, 1, 1, 2, 4, 2, 1)  # layer5 dilation 2, layer6 4, layer7 2, layer8 1


@pytest.fixture(scope="module")
def drn_d_22() -> drn.DRNSeg:
    torch.manual_seed(0)
    return MODELS.build("drn_d_22", num_classes=3)


def _meta(name: str) -> drn.DRNSeg:
    with torch.device("meta"):
        return MODELS.build(name, num_classes=4)


def _level_dilations(level: nn.Sequential) -> set[int]:
    return {m.dilation[0] for m in level.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] == 3}


@pytest.mark.parametrize("name", sorted(OFFICIAL_LAYERS))
def test_layer_table_matches_the_official_code(name: str) -> None:
    base = _meta(name).base
    for level, blocks in enumerate(OFFICIAL_LAYERS[name], start=1):
        layer = getattr(base, f"layer{level}")
        is_conv_level = name.startswith("drn_d") and level in (1, 2, 7, 8)
        count = sum(isinstance(m, nn.Conv2d) for m in layer) if is_conv_level else len(layer)
        assert count == blocks, f"{name} level {level}"
        assert _level_dilations(layer) == {OFFICIAL_DILATIONS[level - 1]}, f"{name} level {level}"
        out = [m for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))][-1]
        expansion = 4 if name in ("drn_d_54", "drn_d_105") and 3 <= level <= 6 else 1
        assert out.num_features == OFFICIAL_CHANNELS[level - 1] * expansion


def test_degridding_levels_have_no_residual() -> None:
    base = _meta("drn_c_26").base
    assert all(block.residual for level in range(1, 7) for block in getattr(base, f"layer{level}"))
    assert not any(block.residual for level in (7, 8) for block in getattr(base, f"layer{level}"))
    assert base.layer7[0].downsample is None and base.layer8[0].downsample is None


def test_residual_switch_changes_the_output() -> None:
    """A non-residual block really drops the identity (guards the forward, not just the flag)."""
    torch.manual_seed(0)
    block = drn.BasicBlock(4, 4).eval()
    x = torch.randn(1, 4, 5, 5)
    plain = block(x)
    block.residual = False
    assert not torch.allclose(plain, block(x))


def test_feature_stride_is_8_and_512_channels(drn_d_22: drn.DRNSeg) -> None:
    drn_d_22.eval()
    with torch.no_grad():
        assert drn_d_22.base(torch.randn(1, 3, 64, 64)).shape == (1, 512, 8, 8)
        assert drn_d_22.base(torch.randn(1, 3, 45, 61)).shape == (1, 512, 6, 8)  # ⌈45/8⌉, ⌈61/8⌉
    assert {MODELS.meta(n)["output_stride"] for n in OFFICIAL_LAYERS} == {8}
    with torch.device("meta"):
        assert drn.DRN(drn.SPECS["drn_d_105"])(torch.empty(1, 3, 64, 64)).shape == (1, 512, 8, 8)


@pytest.mark.parametrize("size", [(1, 1), (17, 9), (63, 33)])
def test_output_is_input_size_for_odd_sizes(drn_d_22: drn.DRNSeg, size: tuple[int, int]) -> None:
    with torch.no_grad():
        assert drn_d_22.eval()(torch.randn(1, 3, *size))["out"].shape == (1, 3, *size)


def test_upsampler_is_frozen_bilinear(drn_d_22: drn.DRNSeg) -> None:
    assert "up_kernel" not in dict(drn_d_22.named_parameters())
    assert drn_d_22.up_kernel.shape == (3, 1, 16, 16)
    torch.testing.assert_close(drn_d_22.up_kernel[1, 0], bilinear_kernel(1, 1, 16)[0, 0])
    # Away from the borders the model's output is exactly bilinear interpolation of its stride-8
    # scores with align_corners=False (coarse pixel i centred at 8i + 3.5), crop included.
    drn_d_22.eval()
    x = torch.randn(1, 3, 45, 56)
    with torch.no_grad():
        scores = drn_d_22.seg(drn_d_22.base(x))
        out = drn_d_22(x)["out"]
    ref = F.interpolate(scores, scale_factor=8, mode="bilinear", align_corners=False)[..., :45, :56]
    torch.testing.assert_close(out[..., 8:-8, 8:-8], ref[..., 8:-8, 8:-8])


def test_seg_head_init_follows_drnseg(drn_d_22: drn.DRNSeg) -> None:
    assert drn_d_22.seg.kernel_size == (1, 1) and drn_d_22.seg.in_channels == 512
    assert not drn_d_22.seg.bias.any()
    assert 0.5 < drn_d_22.seg.weight.std().item() / (2 / 3) ** 0.5 < 1.5


def test_official_state_dict_names() -> None:
    """Keys and shapes the official ImageNet checkpoints use (fyu/drn drn.py module names)."""
    c26 = _meta("drn_c_26").base.state_dict()
    assert c26["conv1.weight"].shape == (16, 3, 7, 7)
    assert c26["layer2.0.downsample.0.weight"].shape == (32, 16, 1, 1)
    assert c26["layer7.0.conv1.weight"].shape == (512, 512, 3, 3)
    d54 = _meta("drn_d_54").base.state_dict()
    assert d54["layer0.0.weight"].shape == (16, 3, 7, 7)
    assert d54["layer1.1.running_mean"].shape == (16,)
    assert d54["layer6.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert d54["layer7.0.weight"].shape == (512, 2048, 3, 3)


def test_pretrained_weights_load_and_fc_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    with torch.device("meta"):
        state = drn.DRN(drn.SPECS["drn_d_38"]).state_dict()
    state["fc.weight"], state["fc.bias"] = torch.empty(1000, 512, 1, 1), torch.empty(1000)
    seen: list[str] = []
    monkeypatch.setattr(backbones, "_download", lambda weights: seen.append(weights.url) or state)
    with torch.device("meta"):
        MODELS.build("drn_d_38", num_classes=4, pretrained_backbone=True)
    assert seen == ["http://dl.yf.io/drn/drn_d_38-eebb45f0.pth"]


def test_wrong_weight_file_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "drn.pth"
    torch.save({"conv1.weight": torch.zeros(16, 3, 7, 7)}, path)
    with torch.device("meta"), pytest.raises(ConfigError, match="pretrained_backbone"):
        MODELS.build("drn_d_22", num_classes=4, pretrained_backbone=str(path))


def test_sgd_reduces_the_loss(drn_d_22: drn.DRNSeg) -> None:
    drn_d_22.train()
    opt = torch.optim.SGD(drn_d_22.parameters(), lr=1e-3, momentum=0.9)
    # A learnable layout (quadrant classes); i.i.d. random labels cannot be fitted at stride 8.
    x, y = torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.long)
    y[:, :, 16:], y[:, 16:, :] = 1, 2
    losses = fit(lambda: F.cross_entropy(drn_d_22(x)["out"], y), opt, 4)
    assert losses[-1] < 0.5 * losses[0]
