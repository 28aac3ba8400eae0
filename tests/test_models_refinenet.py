"""RefineNet-specific tests: block layer sizes, resolutions, RCU/CRP maths, LW variant, knobs.

The full RefineNets have ≥ 99M parameters, so they are only built on the meta
device; the real-tensor tests use small blocks or Light-Weight RefineNet-50.
"""

from __future__ import annotations

from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semseg.models._backbones as backbones
from semseg.errors import ConfigError
from semseg.models import refinenet
from semseg.registry import MODELS
from tests.fixtures.training import fit

K3 = 9 * 256 * 256  # one 3×3 256→256 conv without bias


def _meta(name: str, **kwargs: object) -> refinenet.RefineNet:
    with torch.device("meta"):
        return MODELS.build(name, num_classes=21, **kwargs)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def lw50() -> refinenet.RefineNet:
    torch.manual_seed(0)
    return MODELS.build("refinenet_lw50", num_classes=3, dropout=0.0)  # deterministic steps for the SGD test


def test_full_block_sizes_match_the_released_code() -> None:
    """Per-block counts written out from the layer list (3×3 convs; RCU first conv has a bias)."""
    rcu = lambda c: 2 * 9 * c * c + c  # noqa: E731
    crp = lambda c: 4 * 9 * c * c  # noqa: E731
    blocks = _meta("refinenet101").blocks
    assert _count(blocks[0]) == 9 * 2048 * 512 + 2 * rcu(512) + crp(512) + 3 * rcu(512)
    lower = 2 * rcu(256) + crp(256) + 3 * rcu(256) + K3  # + adapt conv and coarser-path fusion conv
    assert _count(blocks[1]) == lower + 9 * 1024 * 256 + 9 * 512 * 256
    assert _count(blocks[2]) == lower + 9 * 512 * 256 + K3
    assert _count(blocks[3]) == lower + 9 * 256 * 256 + K3
    assert sum(_count(b) for b in blocks) == refinenet._FULL_DECODER
    assert [b.out_channels for b in blocks] == [512, 256, 256, 256]


@pytest.mark.parametrize("name", ["refinenet50", "refinenet152"])
def test_decoder_does_not_depend_on_depth(name: str) -> None:
    model = _meta(name)
    assert sum(_count(b) for b in model.blocks) == refinenet._FULL_DECODER


def test_block_structure() -> None:
    block = _meta("refinenet50").blocks[2]
    assert sum(isinstance(m, refinenet.RCU) for m in block.adapt) == refinenet.ADAPT_RCUS == 2
    assert len(block.output) == refinenet.OUTPUT_RCUS == 3
    assert len(block.crp.convs) == refinenet.CRP_STAGES == 4
    assert block.crp.pool.kernel_size == 5 and block.crp.pool.stride == 1
    assert {m.kernel_size for m in block.modules() if isinstance(m, nn.Conv2d)} == {(3, 3)}
    assert _meta("refinenet50").blocks[0].fuse is None  # RefineNet-4 has a single input


def test_light_weight_has_only_1x1_decoder_convs_and_no_rcus() -> None:
    model = _meta("refinenet_lw101")
    assert not any(isinstance(m, refinenet.RCU) for m in model.modules())
    kernels = {m.kernel_size for b in model.blocks for m in b.modules() if isinstance(m, nn.Conv2d)}
    assert kernels == {(1, 1)}
    assert model.classifier.kernel_size == (3, 3) and model.classifier.bias is not None
    assert sum(_count(b) for b in model.blocks) == refinenet._LW_DECODER
    assert model.dropout.p == 0.5 and not model.drop_classifier  # official: layer3/layer4 only


def test_block_resolutions_are_1_32_to_1_4(lw50: refinenet.RefineNet) -> None:
    sizes: list[tuple[int, int]] = []
    hooks = [b.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:]))) for b in lw50.blocks]
    with torch.no_grad():
        lw50.eval()(torch.randn(1, 3, 64, 64))
        lw50(torch.randn(1, 3, 45, 61))
    for h in hooks:
        h.remove()
    assert sizes[:4] == [(2, 2), (4, 4), (8, 8), (16, 16)]
    assert sizes[4:] == [(2, 2), (3, 4), (6, 8), (12, 16)]  # ceil-mode strides of the ResNet
    assert {MODELS.meta(n)["output_stride"] for n in MODELS.names() if n.startswith("refinenet")} == {32}


def test_rcu_is_residual_and_leaves_its_input_intact() -> None:
    rcu = refinenet.RCU(4)
    x = torch.randn(1, 4, 6, 6)
    x0 = x.clone()
    out = rcu(x)
    torch.testing.assert_close(x, x0)  # no in-place ReLU on the identity path
    torch.testing.assert_close(out, x0 + rcu.conv2(F.relu(rcu.conv1(F.relu(x0)))))
    nn.init.zeros_(rcu.conv2.weight)
    torch.testing.assert_close(rcu(x0), x0)


def test_crp_sums_a_chain_of_pools() -> None:
    """CRP(x) = r + l1 + l2 + l3 with r = ReLU(x), l_k = conv_k(pool(l_{k-1})), l_0 = r (pool first)."""
    torch.manual_seed(0)
    crp = refinenet.CRP(2, stages=3, kernel_size=1)
    x = torch.randn(1, 2, 9, 9)
    link = r = F.relu(x)
    expected = r
    for conv in crp.convs:  # random weights of both signs: pooling and conv do not commute
        link = F.conv2d(F.max_pool2d(link, 5, 1, 2), conv.weight)
        expected = expected + link
    torch.testing.assert_close(crp(x), expected)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_crp_channels_last_pooling_is_bit_identical_and_keeps_the_layout(layout: str) -> None:
    """The CPU speed-up pools through channels-last memory: same values, gradients and output layout as the plain pool."""
    torch.manual_seed(0)
    crp = refinenet.CRP(8, stages=4, kernel_size=1)
    view = {"contiguous": lambda t: t, "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
            "strided": lambda t: t[..., ::2]}[layout]  # fmt: skip
    leaf = torch.randn(2, 8, 17, 46, requires_grad=True)
    plain = leaf.detach().clone().requires_grad_(True)
    x = view(leaf)
    out = crp(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in crp.parameters()]
    crp.zero_grad()
    with patch.object(refinenet.CRP, "_pool", lambda self, t: self.pool(t)):  # the plain NCHW pool
        expected = crp(view(plain))
        expected.square().sum().backward()
    assert torch.equal(out, expected) and torch.equal(leaf.grad, plain.grad)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, crp.parameters()))
    assert out.stride() == expected.stride()  # the layout the plain pool gives, so nothing downstream changes


@pytest.mark.parametrize("corners", [True, False])
def test_fusion_reduces_then_upsamples_then_pools(corners: bool) -> None:
    """Block = CRP(fuse_own(adapt(x)) + up(fuse_coarse(upper))): channels are reduced at 1/2 size."""
    torch.manual_seed(0)
    block = refinenet.RefineBlock(8, 4, upper_width=6, light=True, crp_stages=2, align_corners=corners)
    x, upper = torch.randn(1, 8, 10, 9), torch.randn(1, 6, 5, 5)
    fused = {c: block.fuse[0](block.adapt(x)) + F.interpolate(
        block.fuse[1](upper), size=(10, 9), mode="bilinear", align_corners=c) for c in (True, False)}
    torch.testing.assert_close(block(x, upper), block.crp(fused[corners]))
    assert not torch.allclose(block(x, upper), block.crp(fused[not corners]))
    assert block.out_channels == 4
    with pytest.raises(ValueError):
        block(x)


@pytest.mark.parametrize("name", [n for n in MODELS.names() if n.startswith("refinenet")])
def test_align_corners_default_is_the_official_code(name: str) -> None:
    """Both DrSleep ports upsample with align_corners=True inside the decoder; every block follows it."""
    model = _meta(name)
    assert [b.align_corners for b in model.blocks] == [True] * 4
    assert [b.align_corners for b in _meta(name, align_corners=False).blocks] == [False] * 4


def test_dropout_on_wide_backbone_paths_only() -> None:
    for name in ("refinenet101", "refinenet_lw101"):
        assert _meta(name).drop_paths == {"layer3", "layer4"}
        assert _meta(name).dropout.p == 0.5
    assert _meta("refinenet101").drop_classifier and not _meta("refinenet_lw101").drop_classifier


def test_light_weight_drops_layer3_and_layer4_in_training() -> None:
    """Official LW code: l4 = do(l4); l3 = do(l3) with Dropout(0.5); nothing before the classifier."""
    torch.manual_seed(0)
    model = MODELS.build("refinenet_lw50", num_classes=3).train()
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.backbone.register_forward_hook(lambda m, i, o: seen.update(feats=o)),
             model.blocks[0].register_forward_pre_hook(lambda m, i: seen.update(b0=i[0])),
             model.blocks[1].register_forward_pre_hook(lambda m, i: seen.update(b1=i[0])),
             model.blocks[2].register_forward_pre_hook(lambda m, i: seen.update(b2=i[0])),
             model.blocks[3].register_forward_hook(lambda m, i, o: seen.update(last=o)),
             model.classifier.register_forward_pre_hook(lambda m, i: seen.update(clf=i[0]))]
    model(torch.randn(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    for block, path in (("b0", "layer4"), ("b1", "layer3")):
        feat, seen_in = seen["feats"][path], seen[block]
        nz = feat != 0
        ratio = seen_in[nz] / feat[nz]
        assert set(torch.unique(ratio.round(decimals=4)).tolist()) == {0.0, 2.0}, block  # kept ×1/(1-p) or dropped
    assert torch.equal(seen["b2"], seen["feats"]["layer2"])  # 512-channel layer2: not dropped
    assert torch.equal(seen["clf"], seen["last"])  # no dropout before the LW classifier


def test_knobs_and_their_errors() -> None:
    two = _meta("refinenet50", crp_stages=2)
    assert _count(two) == _count(_meta("refinenet50")) - 2 * 9 * (512 * 512 + 3 * 256 * 256)
    with pytest.raises(ConfigError, match="model.params.crp_stages"):
        _meta("refinenet50", crp_stages=0)
    with pytest.raises(ConfigError, match="model.params.dropout"):
        _meta("refinenet50", dropout=1.0)


def test_pretrained_backbone_loads_torchvision_resnet(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet50

    with torch.device("meta"):
        state = resnet50(weights=None).state_dict()
    asked: list[object] = []
    monkeypatch.setattr(backbones, "_download", lambda weights: asked.append(weights) or state)
    with torch.device("meta"):
        MODELS.build("refinenet_lw50", num_classes=3, pretrained_backbone=True)
    assert len(asked) == 1 and "ResNet50" in str(asked[0])


def test_sgd_reduces_the_loss(lw50: refinenet.RefineNet) -> None:
    """A few SGD steps fit one tiny batch better, every step.

    BN statistics stay fixed, as in the released RefineNet training (its ResNet BN moments are
    frozen): at 32 px layer4 is 1×1, and batch statistics of 2 values make the steps erratic.
    """
    torch.manual_seed(0)
    lw50.train()
    for m in lw50.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    opt = torch.optim.SGD(lw50.parameters(), lr=3e-4, momentum=0.9)
    x, y = torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.long)
    y[:, :, 16:], y[:, 16:, :] = 1, 2  # a learnable layout (quadrant classes)
    losses = fit(lambda: F.cross_entropy(lw50(x)["out"], y), opt, 4)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
