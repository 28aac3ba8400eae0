"""FRRN tests: the two streams' resolutions, the FRRU's shapes and arithmetic, A vs B, counts, the bootstrapped loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semseg.config import load_config
from semseg.errors import ConfigError
from semseg.losses import build_criterion
from semseg.models import frrn
from semseg.models.frrn import FRRN, FRRU, ResidualUnit
from semseg.registry import MODELS
from tests.conftest import REPO
from tests.fixtures.training import fit


def _meta(name: str, num_classes: int = 19) -> FRRN:
    with torch.device("meta"):
        return MODELS.build(name, num_classes=num_classes)


def _units(model: FRRN) -> list[FRRU]:
    return [u for stage in (*model.encoder, *model.decoder) for u in stage.units]


def _authors_count(encoder: frrn.Layout, decoder: frrn.Layout, classes: int, b: int = 48, lanes: int = 32) -> int:
    """Parameters of the authors' Lasagne builder (dltools/architectures.py), from its layer list."""
    ru = lambda i, o: 9 * i * o + 2 * o + 9 * o * o + 2 * o + (i * o if i != o else 0)
    frru = lambda i, c: 9 * (i + lanes) * c + 2 * c + 9 * c * c + 2 * c + c * lanes + lanes
    total = 25 * 3 * b + 2 * b + 3 * ru(b, b) + b * lanes + 2 * lanes  # 5×5 conv, three RUs, the split
    channels = b
    for _, multiplier, units in (*encoder, *decoder):
        for _ in range(units):
            total += frru(channels, b * multiplier)
            channels = b * multiplier
    return total + ru(channels + lanes, b) + 2 * ru(b, b) + b * classes + classes


def test_table_1_layouts_and_frrn_b_is_one_level_deeper() -> None:
    a, b = _meta("frrn_a"), _meta("frrn_b")
    levels = lambda m: [s.level for s in (*m.encoder, *m.decoder)]
    assert levels(a) == [1, 2, 3, 4, 3, 2, 1] and levels(b) == [1, 2, 3, 4, 5, 4, 3, 2, 1]
    widths = lambda m: [u.convs[1][0].out_channels for u in _units(m)]
    assert widths(a) == [96] * 3 + [192] * 4 + [384] * 4 + [192] * 4 + [96] * 2
    assert widths(b) == [96] * 3 + [192] * 4 + [384] * 6 + [192] * 6 + [96] * 2
    assert len(_units(a)) == 17 and len(_units(b)) == 21
    assert [u.scale for u in _units(b)][11:15] == [32, 32, 16, 16]  # FRRN B's extra pooling level and its way up
    for model in (a, b):
        assert model.stem[0][0].kernel_size == (5, 5) and model.stem[0][0].out_channels == 48
        assert [type(m) for m in model.stem[1:]] == [ResidualUnit] * 3
        assert model.split[0].out_channels == 32 and len(model.split) == 2  # 1×1 conv + BN, no ReLU
        assert {u.to_residual.out_channels for u in _units(model)} == {32}
        assert model.head[0].project is not None and model.head[0].project.in_channels == 96 + 32
        assert [ru.project for ru in model.head[1:]] == [None, None]
    assert (MODELS.meta("frrn_a")["output_stride"], MODELS.meta("frrn_b")["output_stride"]) == (16, 32)


@pytest.mark.parametrize("name", ["frrn_a", "frrn_b"])
def test_residual_stream_stays_at_full_resolution_and_the_pooling_stream_goes_down(name: str) -> None:
    """Hooks on every FRRU at an odd size: z is always 32 × H × W, y is at ⌈H/2ⁿ⌉ × ⌈W/2ⁿ⌉ of its level."""
    model = MODELS.build(name, num_classes=3, base_channels=4, lanes=5).eval()
    seen: list[tuple[int, torch.Size, torch.Size, torch.Size, torch.Size]] = []
    for unit in _units(model):
        unit.register_forward_hook(lambda m, inp, out: seen.append((m.scale, inp[0].shape, inp[1].shape, *[o.shape for o in out])))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 45, 61))["out"]
    assert out.shape == (1, 3, 45, 61) and len(seen) == len(_units(model))
    for scale, y_in, z_in, y_out, z_out in seen:
        assert z_in == z_out == (1, 5, 45, 61)
        assert y_in[-2:] == y_out[-2:] == (math.ceil(45 / scale), math.ceil(61 / scale))
    assert max(s for s, *_ in seen) == MODELS.meta(name)["output_stride"]


def test_frru_shapes_and_arithmetic() -> None:
    unit = FRRU(in_channels=6, channels=7, lanes=3, scale=4).eval()
    y, z = torch.randn(2, 6, 3, 4), torch.randn(2, 3, 11, 13)  # z: 11×13 at full resolution, ⌈/4⌉ = 3×4
    with torch.no_grad():
        y2, z2 = unit(y, z)
        pooled = F.max_pool2d(z, 4, 4, ceil_mode=True)
        expected_y = unit.convs(torch.cat([y, pooled], 1))
        residual = unit.to_residual(expected_y)
        repeated = residual.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)[..., :11, :13]
    assert unit.convs[0][0].in_channels == 6 + 3 and y2.shape == (2, 7, 3, 4) and z2.shape == z.shape
    torch.testing.assert_close(y2, expected_y)
    torch.testing.assert_close(z2, z + repeated)  # the residual is unpooled by repetition and added
    assert unit.to_residual.bias is not None and unit.convs[0][0].bias is None


def test_residual_unit_has_no_relu_after_the_sum() -> None:
    ru = ResidualUnit(4, 4).eval()
    with torch.no_grad():
        x = torch.randn(1, 4, 6, 6)
        torch.testing.assert_close(ru(x), ru.branch(x) + x)
        assert (ru(x) < 0).any()


@pytest.mark.parametrize("name, encoder, decoder, pinned", [
    ("frrn_a", frrn.FRRN_A_ENCODER, frrn.FRRN_A_DECODER, 17_746_803),
    ("frrn_b", frrn.FRRN_B_ENCODER, frrn.FRRN_B_DECODER, 24_755_699),
])  # fmt: skip
def test_counts_are_the_authors_builders(name: str, encoder: frrn.Layout, decoder: frrn.Layout, pinned: int) -> None:
    model = _meta(name)
    params = sum(p.numel() for p in model.parameters())
    assert params == _authors_count(encoder, decoder, 19) == pinned
    assert round(params / 1e6, 1) == MODELS.meta(name)["paper_params"] / 1e6  # the paper's 17.7M / 24.8M
    assert sum(p.numel() for p in _meta(name, 11).parameters()) == _authors_count(encoder, decoder, 11)


def test_sizes_divisible_by_the_pooling_factor_need_no_crop() -> None:
    """At 32×48 (÷16) every ×2 and every unpooling lands exactly on the size it returns to: the authors' graph."""
    model = MODELS.build("frrn_a", num_classes=3, base_channels=4, lanes=4).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        y, z = model.streams(x)
    assert y.shape == (1, 8, 32, 48) and z.shape == (1, 4, 32, 48)  # the /2 stage's 2·4 maps, back at full size
    small = torch.randn(1, 2, 3, 4)
    assert frrn.upsample2(small, torch.Size([6, 8])).shape[-2:] == (6, 8)
    torch.testing.assert_close(frrn.upsample2(small, torch.Size([5, 7])), frrn.upsample2(small, torch.Size([6, 8]))[..., :5, :7])


@pytest.mark.parametrize("recipe", ["frrn_a_cityscapes.yml", "frrn_b_cityscapes.yml", "frrn_a_camvid.yml"])
def test_recipes_bootstrap_the_512x64_worst_pixels_of_each_image(recipe: str) -> None:
    """The authors' loss: mean cross-entropy of the K = 512·64 worst pixels per image (train.py, losses.py)."""
    cfg = load_config(REPO / "configs" / recipe)
    assert cfg.loss.name == "ohem_cross_entropy" and cfg.optim.name == "adam" and cfg.optim.lr == 1e-3
    assert cfg.loss.params["min_kept"] == 512 * 64 * cfg.data.batch_size
    criterion = build_criterion(cfg.loss, ignore_index=255, weight=None)
    logits, target = torch.randn(cfg.data.batch_size, 4, 256, 256), torch.randint(0, 4, (cfg.data.batch_size, 256, 256))
    pixel = F.cross_entropy(logits, target, reduction="none").flatten()
    worst = pixel.topk(cfg.loss.params["min_kept"]).values.mean()
    torch.testing.assert_close(criterion({"out": logits}, target), worst)


def test_bad_params_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.params.lanes"):
        MODELS.build("frrn_a", num_classes=4, lanes=0)
    with pytest.raises(ConfigError, match="model.params.base_channels"):
        MODELS.build("frrn_b", num_classes=4, base_channels=0)


def test_a_few_adam_steps_fit_a_batch() -> None:
    torch.manual_seed(0)
    model = MODELS.build("frrn_a", num_classes=5, base_channels=8, lanes=8).train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = fit(lambda: F.cross_entropy(model(x)["out"], y), opt, 10)
    assert losses[-1] < 0.9 * losses[0], losses

