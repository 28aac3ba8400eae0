"""OCNet tests: self-attention against its formula, pyramid cells, ASP-OC branches, zero-init W, the counts.

The ResNet-101 nets are built on the meta device; the attention modules are tested alone, for real.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semseg.errors import ConfigError
from semseg.models import ocnet
from semseg.registry import MODELS
from tests.fixtures.training import fit
from tests.test_models_pspnet import resnet_trunk_params

NAMES = ("ocnet_base_resnet101", "ocnet_pyramid_resnet101", "ocnet_asp_resnet101")


def _attention(block: ocnet.SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The formula, position by position: out_i = W Σ_j softmax_j(k_i·k_j / √d) v_j (keys are the queries)."""
    k, v = block.f_key(x).flatten(2)[0], block.f_value(x).flatten(2)[0]  # d × hw, c × hw
    weights = torch.softmax(k.T @ k / k.shape[0] ** 0.5, dim=1)  # [i, j]
    context = (v @ weights.T).reshape(1, -1, *x.shape[-2:])
    return block.W(context)


def test_self_attention_is_the_formula_with_shared_key_and_query() -> None:
    torch.manual_seed(0)
    block = ocnet.SelfAttention(16, 8, 12, 10, zero_init=False).eval()
    x = torch.randn(1, 16, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _attention(block, x))
    assert not hasattr(block, "f_query")  # one transform for both, as the release's f_query = f_key


def test_pyramid_cells_attend_only_within_themselves() -> None:
    """Scale 2 on 5×7: cells rows [0:2], [2:5] × cols [0:3], [3:7]; each is the formula on its own crop."""
    torch.manual_seed(0)
    block = ocnet.SelfAttention(16, 8, 12, 10, scale=2, pyramid=True, zero_init=False).eval()
    x = torch.randn(1, 16, 5, 7)
    assert ocnet._cells(5, 2) == [(0, 2), (2, 5)] and ocnet._cells(7, 2) == [(0, 3), (3, 7)]
    with torch.no_grad():
        out = block(x)
        for r0, r1 in ocnet._cells(5, 2):
            for c0, c1 in ocnet._cells(7, 2):
                torch.testing.assert_close(out[..., r0:r1, c0:c1], _attention(block, x[..., r0:r1, c0:c1]))


def test_pooled_attention_runs_at_half_size_and_comes_back() -> None:
    torch.manual_seed(0)
    block = ocnet.SelfAttention(16, 8, 12, 10, scale=2, zero_init=False).eval()
    x = torch.randn(1, 16, 7, 9)
    with torch.no_grad():
        small = F.max_pool2d(x, 2)
        expected = F.interpolate(_attention(block, small), size=(7, 9), mode="bilinear", align_corners=True)
        torch.testing.assert_close(block(x), expected)


def test_zero_init_makes_the_context_start_at_zero() -> None:
    block = ocnet.SelfAttention(16, 8, 12, 10)
    assert not block.W.weight.any() and not block.W.bias.any()
    with torch.no_grad():
        assert not block(torch.randn(2, 16, 4, 4)).any()


@pytest.mark.parametrize("name", NAMES)
def test_param_count_is_the_derivation(name: str) -> None:
    head = name.split("_")[1]
    conv_bn = lambda i, o, k=1, bias=True: k * k * i * o + (o if bias else 0) + 2 * o  # noqa: E731
    attention = lambda c, key, value, out: conv_bn(c, key) + c * value + value + value * out + out  # noqa: E731
    reduce = conv_bn(2048, 512, 3)
    heads = {
        "base": reduce + attention(512, 256, 256, 512) + conv_bn(1024, 512),
        "pyramid": reduce + 4 * attention(512, 256, 512, 512) + conv_bn(512, 2048) + conv_bn(4096, 512),
        "asp": reduce + conv_bn(512, 256, 3) + attention(256, 128, 256, 256) + conv_bn(256, 256)
        + conv_bn(512, 256, bias=False) + 3 * conv_bn(512, 256, 3, bias=False) + conv_bn(1280, 512, bias=False),
    }
    expected = resnet_trunk_params(101, False) + heads[head] + conv_bn(1024, 512, 3) + 2 * 513 * 19
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=19)
    assert sum(p.numel() for p in model.parameters()) == expected == MODELS.meta(name)["paper_params"]
    assert heads[head] == ocnet.HEAD_PARAMS[head]


def test_heads_have_the_releases_shapes() -> None:
    with torch.device("meta"):
        base, pyramid, asp = (MODELS.build(n, num_classes=4) for n in NAMES)
        x = torch.empty(1, 2048, 6, 8)
        assert base.context(x).shape == pyramid.context(x).shape == asp.context(x).shape == (1, 512, 6, 8)
    assert [s.scale for s in pyramid.context.stages] == [1, 2, 3, 6]
    assert pyramid.context.fuse[0][0].in_channels == 4096 and len(pyramid.context.reduce) == 2  # BN, no act
    assert [b[0].dilation[0] for b in asp.context.branches] == [1, 12, 24, 36]
    assert asp.context.context[1].scale == 2 and asp.context.fuse[0][0].in_channels == 1280
    assert isinstance(base.context.reduce[2], torch.nn.LeakyReLU) and base.context.reduce[2].negative_slope == 0.01


def test_aux_head_in_training_only_and_stride_8() -> None:
    with torch.device("meta"):
        model = MODELS.build("ocnet_asp_resnet101", num_classes=4).train()
        x = torch.empty(2, 3, 45, 61)
        assert model.backbone(x)["layer4"].shape[-2:] == (6, 8)
        assert set(model(x)) == {"out", "aux"} and set(model.eval()(x)) == {"out"}


@pytest.mark.parametrize("cls, kwargs, key", [(ocnet.PyramidOC, {"sizes": [1, 0]}, "sizes"),
                                              (ocnet.ASPOC, {"rates": [12, 24]}, "rates")])
def test_bad_settings_are_one_line_config_errors(cls: type, kwargs: dict, key: str) -> None:
    with torch.device("meta"), pytest.raises(ConfigError, match=f"model.params.{key}:"):
        cls(2048, **kwargs)
    name = "ocnet_pyramid_resnet101" if key == "sizes" else "ocnet_asp_resnet101"
    with torch.device("meta"), pytest.raises(ConfigError, match=f"model.params.{key}:"):
        MODELS.build(name, num_classes=4, **kwargs)
    with torch.device("meta"), pytest.raises(ConfigError, match="model.params.head:"):
        ocnet.OCNet("ocr", 4)


def test_a_few_sgd_steps_fit_a_batch_from_the_zero_context() -> None:
    """Base-OC on random 2048-channel features, zero-initialised W as the release: the head still learns."""
    torch.manual_seed(0)
    head, cls = ocnet.BaseOC(64), torch.nn.Conv2d(512, 3, 1)
    feats, y = torch.randn(2, 64, 4, 4), torch.randint(0, 3, (2, 4, 4))
    opt = torch.optim.SGD([*head.parameters(), *cls.parameters()], lr=0.05, momentum=0.9)
    losses = fit(lambda: F.cross_entropy(cls(head(feats)), y), opt, 6)
    assert losses[-1] < 0.9 * losses[0], losses
    assert head.attention.W.weight.abs().sum() > 0  # the context path left zero after the first step
