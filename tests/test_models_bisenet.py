"""BiSeNet tests: spatial path at 1/8, context strides, ARM / FFM maths and shapes, the two aux heads
(training only, summed by the criterion), the parameter derivation and the paper's MiB figures, weights.

The Xception39 net (3 classes) is built for real and shared; ResNet-18 nets are built on demand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import semseg.models._backbones as backbones
from semseg.config import LossConfig
from semseg.errors import ConfigError
from semseg.losses import LOSSES, build_criterion
from semseg.models import bisenet
from semseg.registry import MODELS
from tests.conftest import assert_onnx_matches
from tests.fixtures.training import fit

NAMES = ("bisenet_xception39", "bisenet_resnet18")
TABLE = {"bisenet_xception39": 5.8, "bisenet_resnet18": 49.0}  # the paper's "params (M)" at 640×360


@pytest.fixture(scope="module")
def x39() -> bisenet.BiSeNet:
    torch.manual_seed(0)
    return MODELS.build("bisenet_xception39", num_classes=3)


def conv_bn(c_in: int, c_out: int, k: int) -> int:
    return k * k * c_in * c_out + 2 * c_out


def xception39_params() -> int:
    """Stem 3×3 3→8 + BN; per block three separable convs (depthwise 9·c_in, 1×1, BN) and a strided projection."""
    sep = lambda c_in, c_out: 9 * c_in + c_in * c_out + 2 * c_out  # noqa: E731
    total, c = conv_bn(3, 8, 3), 8
    for blocks, mid in zip((4, 8, 4), (16, 32, 64)):
        for i in range(blocks):
            total += sep(c, mid) + sep(mid, mid) + sep(mid, 4 * mid) + (sep(c, 4 * mid) if i == 0 else 0)
            c = 4 * mid
    return total


def resnet18_params() -> int:
    """BasicBlock ResNet-18 without fc: stem 7×7, two 3×3 per block, 1×1 projections on strided blocks."""
    total, c = 49 * 3 * 64 + 2 * 64, 64
    for width in (64, 128, 256, 512):
        for i in range(2):
            total += conv_bn(c, width, 3) + conv_bn(width, width, 3)
            total += conv_bn(c, width, 1) if c != width else 0
            c = width
    return total


def head_params(name: str, num_classes: int, aux: bool) -> int:
    c16, c32 = (128, 256) if name.endswith("xception39") else (256, 512)
    aux_mid = 128 if name.endswith("xception39") else 256
    spatial = conv_bn(3, 64, 7) + 2 * conv_bn(64, 64, 3) + conv_bn(64, 128, 1)
    arms = sum(conv_bn(c, 128, 3) + 128 * 128 + 2 * 128 for c in (c16, c32))
    total = spatial + conv_bn(c32, 128, 1) + arms + 2 * conv_bn(128, 128, 3)
    total += conv_bn(256, 256, 1) + 2 * 256 * 256  # FFM: fusion 1×1 + BN, two bias-free 1×1 of the attention
    total += conv_bn(256, 64, 3) + 65 * num_classes
    return total + (2 * (conv_bn(128, aux_mid, 3) + (aux_mid + 1) * num_classes) if aux else 0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes", [19, 11])
@pytest.mark.parametrize("aux", [True, False])
def test_param_count_is_the_derivation(name: str, num_classes: int, aux: bool) -> None:
    trunk = xception39_params() if name.endswith("xception39") else resnet18_params()
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=num_classes, aux=aux)
    assert sum(p.numel() for p in model.parameters()) == trunk + head_params(name, num_classes, aux)


@pytest.mark.parametrize("name", NAMES)
def test_the_papers_figures_are_the_deployed_nets_fp32_mib(name: str) -> None:
    """5.8 and 49 'M' are 4-byte weights in MiB (19 classes, no aux heads), printed to the table's digits."""
    meta = MODELS.meta(name)
    with torch.device("meta"):
        model = MODELS.build(name, **meta["paper_kwargs"])
    mib = 4 * sum(p.numel() for p in model.parameters()) / 2**20
    digits = 1 if name.endswith("xception39") else 0
    assert math.floor(mib * 10**digits) / 10**digits == TABLE[name] == meta["paper_table_params"] / 1e6
    assert meta["paper_params"] == TABLE[name] * 2**20 / 4 and meta["paper_kwargs"] == {"num_classes": 19, "aux": False}


def test_spatial_path_is_three_stride_2_convs_to_128_at_one_eighth(x39: bisenet.BiSeNet) -> None:
    convs = [m for m in x39.spatial_path.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0], c.out_channels) for c in convs] == [(7, 2, 64), (3, 2, 64), (3, 2, 64),
                                                                                (1, 1, 128)]
    with torch.no_grad():
        assert x39.spatial_path(torch.randn(1, 3, 45, 61)).shape == (1, 128, 6, 8)  # ⌈45/8⌉, ⌈61/8⌉
        assert x39.spatial_path(torch.randn(1, 3, 64, 64)).shape == (1, 128, 8, 8)


@pytest.mark.parametrize("name", NAMES)
def test_context_path_strides_and_channels(name: str) -> None:
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=4)
        feats = model.context_path(torch.empty(1, 3, 64, 96))
    expected = {"8": 64, "16": 128, "32": 256} if name.endswith("xception39") else {"8": 128, "16": 256, "32": 512}
    assert {k: v.shape[1] for k, v in feats.items()} == expected == model.context_path.channels
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {"8": (8, 12), "16": (4, 6), "32": (2, 3)}


def test_attention_refinement_is_conv_times_a_sigmoid_channel_vector() -> None:
    torch.manual_seed(0)
    arm = bisenet.AttentionRefinement(256).eval()
    x = torch.randn(2, 256, 5, 7)
    with torch.no_grad():
        feat = arm.conv(x)
        vector = arm.attention(feat)
        out = arm(x)
    assert feat.shape == out.shape == (2, 128, 5, 7) and vector.shape == (2, 128, 1, 1)
    assert (vector > 0).all() and (vector < 1).all()
    torch.testing.assert_close(out, feat * vector)
    pooled = F.adaptive_avg_pool2d(feat, 1)  # the attention sees the globally pooled refined features
    torch.testing.assert_close(vector, torch.sigmoid(arm.attention[2](arm.attention[1](pooled))))


def test_feature_fusion_concatenates_and_adds_its_reweighted_self() -> None:
    torch.manual_seed(0)
    ffm = bisenet.FeatureFusion(256, 256).eval()
    spatial, context = torch.randn(2, 128, 6, 8), torch.randn(2, 128, 6, 8)
    with torch.no_grad():
        fused = ffm.conv(torch.cat([spatial, context], dim=1))
        weights = ffm.attention(fused)
        out = ffm(spatial, context)
    assert out.shape == (2, 256, 6, 8) and weights.shape == (2, 256, 1, 1)
    torch.testing.assert_close(out, fused + fused * weights)
    assert ffm.conv[0].in_channels == 256 and ffm.conv[0].kernel_size == (1, 1)


def test_aux_heads_in_training_only_at_the_input_size(x39: bisenet.BiSeNet) -> None:
    seen = {}
    hooks = [getattr(x39, k).register_forward_hook(lambda m, i, o, k=k: seen.update({k: i[0].shape}))
             for k in ("aux_16", "aux_8", "head")]
    x39.train()
    out = x39(torch.randn(2, 3, 45, 61))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, 3, 45, 61) for k in ("out", "aux_16", "aux_8")}
    assert seen == {"aux_16": (2, 128, 3, 4), "aux_8": (2, 128, 6, 8), "head": (2, 256, 6, 8)}  # 1/16, 1/8, FFM
    x39.eval()
    seen.clear()
    with torch.no_grad():
        assert set(x39(torch.randn(1, 3, 45, 61))) == {"out"}
    assert set(seen) == {"head"}  # eval skips the aux heads' cost
    for hook in hooks:
        hook.remove()
    lean = MODELS.build("bisenet_xception39", num_classes=3, aux=False).train()
    assert set(lean(torch.randn(2, 3, 32, 32))) == {"out"} and lean.aux_16 is None


def test_the_criterion_sums_main_and_both_aux_losses_at_alpha_1(x39: bisenet.BiSeNet) -> None:
    torch.manual_seed(1)
    x39.train()
    x, target = torch.randn(2, 3, 32, 48), torch.randint(0, 3, (2, 32, 48))
    out = x39(x)
    ce = LOSSES.build("cross_entropy", ignore_index=255)
    expected = ce(out["out"], target) + ce(out["aux_16"], target) + ce(out["aux_8"], target)
    total = build_criterion(LossConfig(aux_weight=1.0), 255)(out, target)
    torch.testing.assert_close(total, expected)
    total.backward()
    assert x39.aux_16[1].weight.grad is not None and x39.context_path.layer3[0].proj[0].weight.grad is not None
    x39.zero_grad()


def test_torchvision_weights_fit_resnet18_and_xception39_needs_a_file(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path) -> None:
    from torchvision.models import resnet18

    with torch.device("meta"):
        state = resnet18(weights=None).state_dict()
        monkeypatch.setattr(backbones, "_download", lambda weights: state)
        MODELS.build("bisenet_resnet18", num_classes=4, pretrained_backbone=True)  # raises on any mismatch
    with pytest.raises(ConfigError, match=r"^model.params.pretrained_backbone: torchvision has no ImageNet Xception39"):
        MODELS.build("bisenet_xception39", num_classes=4, pretrained_backbone=True)
    donor = bisenet.Xception39()
    torch.save(donor.state_dict(), tmp_path / "x39.pt")
    model = MODELS.build("bisenet_xception39", num_classes=4, pretrained_backbone=str(tmp_path / "x39.pt"))
    torch.testing.assert_close(model.context_path.stem[0][0].weight, donor.stem[0][0].weight)


def test_a_few_sgd_steps_with_the_aux_losses_fit_a_batch() -> None:
    torch.manual_seed(0)
    model = MODELS.build("bisenet_xception39", num_classes=3).train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    crit = build_criterion(LossConfig(aux_weight=1.0), 255)
    opt = torch.optim.SGD(model.parameters(), lr=2.5e-2, momentum=0.9)
    losses = fit(lambda: crit(model(x), y), opt, 15)
    assert losses[-1] < 0.7 * losses[0], losses


def test_onnx_export_matches_pytorch(x39: bisenet.BiSeNet, tmp_path) -> None:
    """Eval mode: the global pools, the attention products and the align_corners resizes survive export."""
    assert_onnx_matches(x39, tmp_path / "bisenet.onnx", (64, 96))

