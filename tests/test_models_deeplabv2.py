"""DeepLab v2 tests: the LargeFOV layer table and fc decimation, the summed four-rate ASPP, counts.

ResNet-101 is built on the meta device only; one LargeFOV net (3 classes, no dropout) is built for real.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semseg.models._backbones as backbones
from semseg.errors import ConfigError
from semseg.models import deeplabv2
from semseg.registry import MODELS
from tests.fixtures.training import fit
from tests.test_models_pspnet import resnet_trunk_params


@pytest.fixture(scope="module")
def fov() -> deeplabv2.VGG16LargeFOV:
    torch.manual_seed(0)
    return MODELS.build("deeplabv2_vgg16_largefov", num_classes=3, dropout=0.0)


def test_largefov_count_is_the_papers_20_5m() -> None:
    vgg_convs = sum(9 * i * o + o for i, o in [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256),
                                                (256, 256), (256, 512)] + [(512, 512)] * 5)
    expected = vgg_convs + (9 * 512 * 1024 + 1024) + (1024 * 1024 + 1024) + 1025 * 21
    with torch.device("meta"):
        model = MODELS.build("deeplabv2_vgg16_largefov", num_classes=21)
    assert sum(p.numel() for p in model.parameters()) == expected == 20_505_429
    assert round(expected / 1e6, 1) == MODELS.meta("deeplabv2_vgg16_largefov")["paper_params"] / 1e6 == 20.5


def test_resnet101_aspp_count_is_the_derivation() -> None:
    expected = resnet_trunk_params(101, False) + 4 * (9 * 2048 * 21 + 21)
    with torch.device("meta"):
        model = MODELS.build("deeplabv2_resnet101", num_classes=21)
    assert sum(p.numel() for p in model.parameters()) == expected == MODELS.meta("deeplabv2_resnet101")["paper_params"]


def test_largefov_layer_table(fov: deeplabv2.VGG16LargeFOV) -> None:
    pools = [(i, m.kernel_size, m.stride, m.padding, m.ceil_mode) for i, m in enumerate(fov.backbone.features)
             if isinstance(m, nn.MaxPool2d)]
    assert pools == [(4, 3, 2, 1, True), (9, 3, 2, 1, True), (16, 3, 2, 1, True), (23, 3, 1, 1, True),
                     (30, 3, 1, 1, True)]
    rates = [m.dilation[0] for m in fov.backbone.features if isinstance(m, nn.Conv2d)]
    assert rates == [1] * 10 + [2] * 3  # conv5 atrous
    fc6 = fov.backbone.fc6
    assert (fc6.kernel_size, fc6.dilation, fc6.padding, fc6.out_channels) == ((3, 3), (12, 12), (12, 12), 1024)
    assert fov.backbone.fc7.kernel_size == (1, 1) and fov.backbone.fc7.out_channels == 1024
    assert isinstance(fov.backbone.pool5a, nn.AvgPool2d) and fov.backbone.pool5a.count_include_pad
    with torch.no_grad():  # 8k+1 inputs (the paper's 321, 513) give exactly k+1 cells, as Caffe
        assert fov.backbone.features(torch.randn(1, 3, 41, 57)).shape[-2:] == (6, 8)


def test_fc_decimation_takes_every_4th_filter_and_3rd_tap() -> None:
    with torch.device("meta"):
        from torchvision.models import vgg16

        state = vgg16(weights=None).state_dict()
    out = deeplabv2.decimate_vgg_fc(state)
    assert out["fc6.weight"].shape == (1024, 512, 3, 3) and out["fc7.weight"].shape == (1024, 1024, 1, 1)
    assert out["fc6.bias"].shape == out["fc7.bias"].shape == (1024,)
    assert not any(k.startswith("classifier.") for k in out)
    fc6 = torch.arange(4096 * 512 * 49, dtype=torch.float32).reshape(4096, 512 * 49)
    small = deeplabv2.decimate_vgg_fc({"classifier.0.weight": fc6, "classifier.0.bias": torch.arange(4096.0)})
    # filter 4·1 = 4, input channel 2, tap (row 3, col 6) of the 7×7: flat index ((4·512 + 2)·7 + 3)·7 + 6
    assert small["fc6.weight"][1, 2, 1, 2].item() == ((4 * 512 + 2) * 7 + 3) * 7 + 6
    assert small["fc6.bias"][5].item() == 20.0


def test_torchvision_weights_load_into_largefov(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import vgg16

    with torch.device("meta"):
        state = vgg16(weights=None).state_dict()
        monkeypatch.setattr(backbones, "_download", lambda weights: state)
        MODELS.build("deeplabv2_vgg16_largefov", num_classes=4, pretrained_backbone=True)  # raises on any mismatch
        from torchvision.models import resnet101

        tv = resnet101(weights=None).state_dict()
        monkeypatch.setattr(backbones, "_download", lambda weights: tv)
        MODELS.build("deeplabv2_resnet101", num_classes=4, pretrained_backbone=True)


def test_aspp_sums_four_rates_at_output_stride_8() -> None:
    with torch.device("meta"):
        model = MODELS.build("deeplabv2_resnet101", num_classes=4)
        feats = model.backbone(torch.empty(1, 3, 45, 61))["layer4"]
    assert feats.shape[-2:] == (6, 8) and MODELS.meta("deeplabv2_resnet101")["output_stride"] == 8
    for layer, rate in (("layer3", 2), ("layer4", 4)):
        assert {b.conv2.dilation[0] for b in getattr(model.backbone, layer)} == {rate}
    assert [(c.dilation[0], c.padding[0], c.out_channels) for c in model.aspp.branches] == [
        (6, 6, 4), (12, 12, 4), (18, 18, 4), (24, 24, 4)]
    aspp = deeplabv2.ASPPSum(8, 3)
    x = torch.randn(1, 8, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(aspp(x), sum(branch(x) for branch in aspp.branches))


@pytest.mark.parametrize("params, key", [({"dropout": 1.0}, "dropout"), ({"rates": []}, "rates")])
def test_bad_settings_are_config_errors(params: dict, key: str) -> None:
    name = "deeplabv2_vgg16_largefov" if key == "dropout" else "deeplabv2_resnet101"
    with torch.device("meta"), pytest.raises(ConfigError, match=f"model.params.{key}:"):
        MODELS.build(name, num_classes=3, **params)


def test_a_few_optimiser_steps_fit_a_batch(fov: deeplabv2.VGG16LargeFOV) -> None:
    """The VGG convs are frozen and run once; fc6, fc7 and fc8 learn (Adam: fc8 starts at N(0, 0.01))."""
    fov.train()
    x, y = torch.randn(2, 3, 33, 33), torch.randint(0, 3, (2, 3, 3)).repeat_interleave(11, 1).repeat_interleave(11, 2)
    with torch.no_grad():
        f = fov.backbone.pool5a(fov.backbone.features(x))
    opt = torch.optim.Adam([*fov.backbone.fc6.parameters(), *fov.backbone.fc7.parameters(), *fov.fc8.parameters()],
                           lr=1e-3)

    def loss() -> torch.Tensor:
        scores = fov.fc8(torch.relu(fov.backbone.fc7(torch.relu(fov.backbone.fc6(f)))))
        return F.cross_entropy(F.interpolate(scores, size=(33, 33), mode="bilinear", align_corners=True), y)

    losses = fit(loss, opt, 8)  # random VGG features are weak (|f| ≈ 0.1): a slow but steady fit
    assert losses[-1] < losses[0] - 0.05, losses
