"""DeepLab v3+ tests: decoder on the 1/4 features (48-channel reduction), MobileNetV2 dilation and end points, count.

ResNet nets are built on the meta device only; the MobileNetV2 net (3 classes) is built for real and shared.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import semseg.models._backbones as backbones
from semseg.models import deeplabv3plus
from semseg.registry import MODELS
from tests.conftest import assert_onnx_matches
from tests.fixtures.training import fit
from tests.test_models_deeplabv3 import aspp_params
from tests.test_models_pspnet import resnet_trunk_params

NAMES = ("deeplabv3plus_resnet50", "deeplabv3plus_resnet101", "deeplabv3plus_mobilenetv2")


@pytest.fixture(scope="module")
def mnv2() -> deeplabv3plus.DeepLabV3Plus:
    torch.manual_seed(0)
    return MODELS.build("deeplabv3plus_mobilenetv2", num_classes=3, dropout=0.0)


def decoder_params(low_channels: int, num_classes: int) -> int:
    """1×1 low→48 (BN) + 3×3 304→256 (BN) + 3×3 256→256 (BN) + 1×1 classifier with bias."""
    return low_channels * 48 + 96 + 9 * 304 * 256 + 512 + 9 * 256 * 256 + 512 + 257 * num_classes


def mobilenetv2_trunk_params() -> int:
    """torchvision mobilenet_v2 without its classifier and its last 1×1 conv (320→1280, BN)."""
    from torchvision.models import mobilenet_v2

    with torch.device("meta"):
        net = mobilenet_v2(weights=None)
    return sum(p.numel() for p in net.parameters()) - (1280 * 1000 + 1000) - (320 * 1280 + 2 * 1280)


@pytest.mark.parametrize("name", NAMES)
def test_param_count_is_the_derivation(name: str) -> None:
    if name.endswith("mobilenetv2"):
        expected = mobilenetv2_trunk_params() + aspp_params(320) + decoder_params(144, 21)
    else:
        depth = 101 if "101" in name else 50
        expected = resnet_trunk_params(depth, False) + aspp_params(2048) + decoder_params(256, 21)
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=21)
    assert sum(p.numel() for p in model.parameters()) == expected == MODELS.meta(name)["paper_params"]


@pytest.mark.parametrize("name", NAMES)
def test_decoder_fuses_48_reduced_channels_at_one_quarter(name: str) -> None:
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=4).train()
        shapes = {}
        for part in ("reduce", "aspp", "decoder"):
            getattr(model, part).register_forward_hook(lambda m, i, o, part=part: shapes.update({part: (i[0], o)}))
        # N = 2: the train-mode BN of the image-pooling branch (a 1×1 map) needs more than one value
        assert model(torch.empty(2, 3, 45, 61))["out"].shape == (2, 4, 45, 61)
    low_in, low_out = shapes["reduce"]
    assert low_in.shape[-2:] == low_out.shape[-2:] == (12, 16)  # ⌈45/4⌉, ⌈61/4⌉
    assert low_out.shape[1] == 48
    assert shapes["aspp"][0].shape[-2:] == (3, 4)  # encoder at output stride 16 in training
    dec_in, dec_out = shapes["decoder"]
    assert dec_in.shape[1:] == (304, 12, 16) and dec_out.shape[1:] == (256, 12, 16)
    assert [m.kernel_size for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)] == [(3, 3)] * 2


@pytest.mark.parametrize("name", NAMES)
def test_encoder_switches_to_stride_8_in_eval(name: str) -> None:
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=4).eval()
        feats = model.backbone(torch.empty(1, 3, 45, 61))
    assert feats["high"].shape[-2:] == (6, 8) and feats["low"].shape[-2:] == (12, 16)
    assert model.aspp.rates == (12, 24, 36)
    model.train()
    assert model.aspp.rates == (6, 12, 18) and model.current_output_stride == 16


def _dilations(model: deeplabv3plus.DeepLabV3Plus) -> list[tuple[int, int]]:
    return [(conv.stride[0], conv.dilation[0]) for conv in model.backbone._spatial]


def test_mobilenetv2_dilation_follows_the_tf_rule() -> None:
    """Once at the target stride, a would-be strided block runs at stride 1 and the current rate; later ones × 2."""
    with torch.device("meta"):
        model = MODELS.build("deeplabv3plus_mobilenetv2", num_classes=4)
    base = [(2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1)]  # features 0-6: strides to 1/8
    model.train()
    assert _dilations(model) == base + [(2, 1)] + [(1, 1)] * 6 + [(1, 1)] + [(1, 2)] * 3
    model.eval()
    assert _dilations(model) == base + [(1, 1)] + [(1, 2)] * 6 + [(1, 2)] + [(1, 4)] * 3
    assert all(conv.padding == conv.dilation for conv in model.backbone._spatial[1:])


def test_mobilenetv2_low_level_is_the_depthwise_output_and_high_is_unchanged(mnv2) -> None:
    """"low" is features[3]'s depthwise output (TF layer_4/depthwise_output); splitting the block changes nothing."""
    backbone = mnv2.backbone.eval()
    seen = []
    hook = backbone.features[3].conv[1].register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        feats = backbone(x)
        plain = backbone.features(x)
    hook.remove()
    assert feats["low"].shape == (1, 144, 10, 13) and torch.equal(feats["low"], seen[0])
    torch.testing.assert_close(feats["high"], plain, rtol=0, atol=1e-6)
    assert feats["high"].shape[1] == 320
    mnv2.train()


def test_torchvision_weights_fit_both_backbones(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import mobilenet_v2, resnet50

    with torch.device("meta"):
        states = {"MobileNet_V2": mobilenet_v2(weights=None).state_dict(),
                  "ResNet50": resnet50(weights=None).state_dict()}
        pick = lambda weights: states[type(weights).__name__.split("_Weights")[0]]  # noqa: E731
        monkeypatch.setattr(backbones, "_download", pick)
        MODELS.build("deeplabv3plus_mobilenetv2", num_classes=4, pretrained_backbone=True)  # raises on any mismatch
        MODELS.build("deeplabv3plus_resnet50", num_classes=4, pretrained_backbone=True)


def test_a_few_adam_steps_fit_a_batch() -> None:
    torch.manual_seed(0)  # a fresh model: the module fixture's weights depend on the tests run before
    model = MODELS.build("deeplabv3plus_mobilenetv2", num_classes=3).train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = fit(lambda: F.cross_entropy(model(x)["out"], y), opt, 15)
    assert losses[-1] < 0.9 * losses[0], losses


def test_onnx_export_matches_pytorch(mnv2, tmp_path) -> None:
    """Eval mode at output stride 8: the image pooling and the align_corners resizes survive export."""
    assert_onnx_matches(mnv2, tmp_path / "dlv3p.onnx", (48, 64))

