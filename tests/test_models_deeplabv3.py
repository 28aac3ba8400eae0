"""DeepLab v3 tests: output stride 16 (train) / 8 (eval) with ASPP rates doubled, multi-grid, image pooling, count.

The ResNet-101 net is built on the meta device only; one small ResNet-50 net (3 classes) is built for real.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import semseg.models._backbones as backbones
from semseg.errors import ConfigError
from semseg.models import deeplabv3
from semseg.registry import MODELS
from tests.fixtures.training import fit
from tests.test_models_pspnet import resnet_trunk_params

NAMES = ("deeplabv3_resnet50", "deeplabv3_resnet101")


@pytest.fixture(scope="module")
def v3() -> deeplabv3.DeepLabV3:
    torch.manual_seed(0)
    return MODELS.build("deeplabv3_resnet50", num_classes=3, dropout=0.0)


def aspp_params(in_channels: int) -> int:
    """1×1 + three 3×3 + image-pooling 1×1 (256 each, BN) + 1×1 projection of the 5·256 concat."""
    bn = 2 * 256
    return 2 * (in_channels * 256 + bn) + 3 * (9 * in_channels * 256 + bn) + 5 * 256 * 256 + bn


@pytest.mark.parametrize("name", NAMES)
def test_param_count_is_the_derivation(name: str) -> None:
    depth = 101 if "101" in name else 50
    expected = resnet_trunk_params(depth, False) + aspp_params(2048) + 257 * 21
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=21)
    assert sum(p.numel() for p in model.parameters()) == expected == MODELS.meta(name)["paper_params"]
    assert aspp_params(2048) == deeplabv3.ASPP_PARAMS


@pytest.mark.parametrize("depth", [50, 101])
def test_count_is_torchvisions_deeplabv3_without_its_extras(depth: int) -> None:
    """torchvision adds a 3×3 256→256 conv to the head and an FCN aux head on layer3; the rest is the paper's."""
    from torchvision.models import segmentation

    with torch.device("meta"):
        tv = getattr(segmentation, f"deeplabv3_resnet{depth}")(weights=None, weights_backbone=None,
                                                                num_classes=21, aux_loss=True)
        ours = MODELS.build(f"deeplabv3_resnet{depth}", num_classes=21)
    extra_conv = 9 * 256 * 256 + 2 * 256
    aux = 9 * 1024 * 256 + 2 * 256 + 257 * 21
    assert sum(p.numel() for p in tv.parameters()) - extra_conv - aux == sum(p.numel() for p in ours.parameters())


def _rates(model: deeplabv3.DeepLabV3) -> dict[str, list[int]]:
    return {layer: [b.conv2.dilation[0] for b in getattr(model.backbone, layer)] for layer in ("layer3", "layer4")}


@pytest.mark.parametrize("name", NAMES)
def test_train_at_stride_16_eval_at_8_with_rates_doubled(name: str) -> None:
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=4)
        x = torch.empty(1, 3, 45, 61)
        assert MODELS.meta(name)["output_stride"] == 16 and MODELS.meta(name)["eval_output_stride"] == 8
        model.train()
        assert model.backbone(x)["high"].shape[-2:] == (3, 4)  # ⌈45/16⌉, ⌈61/16⌉
        assert model.aspp.rates == (6, 12, 18) and model.current_output_stride == 16
        assert set(_rates(model)["layer3"]) == {1} and _rates(model)["layer4"] == [2, 4, 8]  # 2·multi-grid
        assert model.backbone.layer3[0].conv2.stride == model.backbone.layer3[0].downsample[0].stride == (2, 2)
        model.eval()
        assert model.backbone(x)["high"].shape[-2:] == (6, 8)  # ⌈45/8⌉, ⌈61/8⌉
        assert model.aspp.rates == (12, 24, 36) and model.current_output_stride == 8
        assert set(_rates(model)["layer3"]) == {2} and _rates(model)["layer4"] == [4, 8, 16]  # 4·multi-grid
        assert model.backbone.layer3[0].conv2.stride == model.backbone.layer3[0].downsample[0].stride == (1, 1)
        for branch, rate in zip(model.aspp.branches[1:], (12, 24, 36)):
            assert branch[0].padding == (rate, rate)  # same-size output at every rate
        model.train()
        assert model.aspp.rates == (6, 12, 18) and _rates(model)["layer4"] == [2, 4, 8]


def test_eval_output_stride_none_stays_at_16_and_stride_8_training_works() -> None:
    with torch.device("meta"):
        model = MODELS.build("deeplabv3_resnet50", num_classes=4, eval_output_stride=None).eval()
        assert model.current_output_stride == 16 and model.aspp.rates == (6, 12, 18)
        model = MODELS.build("deeplabv3_resnet50", num_classes=4, output_stride=8, multi_grid=[1, 1, 1]).train()
        assert model.current_output_stride == 8 and _rates(model)["layer4"] == [4, 4, 4]


def test_switching_keeps_the_weights_and_matches_a_net_built_at_that_stride(v3: deeplabv3.DeepLabV3) -> None:
    before = {k: v.clone() for k, v in v3.state_dict().items()}
    at8 = deeplabv3.DeepLabV3(50, 3, output_stride=8, eval_output_stride=8, dropout=0.0)
    at8.load_state_dict(before)
    x = torch.randn(1, 3, 33, 40)
    with torch.no_grad():
        ours = v3.eval()(x)["out"]
        torch.testing.assert_close(ours, at8.eval()(x)["out"], rtol=0, atol=0)
        v3.set_output_stride(16)
        at16 = v3(x)["out"]
        v3.set_output_stride(8)
    assert (ours - at16).abs().max() > 1e-4  # the stride really changed the computation
    assert all(torch.equal(before[k], v) for k, v in v3.state_dict().items())


def test_image_pooling_is_global_and_upsampled(v3: deeplabv3.DeepLabV3) -> None:
    seen = []
    hook = v3.aspp.pool.register_forward_hook(lambda m, i, o: seen.append((tuple(i[0].shape), tuple(o.shape))))
    with torch.no_grad():
        v3.eval()(torch.randn(1, 3, 45, 61))
    hook.remove()
    assert seen == [((1, 2048, 6, 8), (1, 256, 1, 1))]
    assert v3.aspp.project[0].in_channels == 5 * 256 and v3.classifier.in_channels == 256


@pytest.mark.parametrize("params, key", [({"output_stride": 32}, "output_stride"),
                                         ({"eval_output_stride": 4}, "eval_output_stride"),
                                         ({"multi_grid": [1, 2]}, "multi_grid"),
                                         ({"rates": [6, 0, 18]}, "rates"),
                                         ({"dropout": 1.0}, "dropout")])
def test_bad_settings_are_one_line_config_errors(params: dict, key: str) -> None:
    with torch.device("meta"), pytest.raises(ConfigError, match=f"model.params.{key}:"):
        MODELS.build("deeplabv3_resnet50", num_classes=4, **params)


def test_torchvision_weights_fit_the_trunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet101

    with torch.device("meta"):
        tv_state = resnet101(weights=None).state_dict()
        monkeypatch.setattr(backbones, "_download", lambda weights: tv_state)
        MODELS.build("deeplabv3_resnet101", num_classes=4, pretrained_backbone=True)  # raises on any mismatch


def test_a_few_sgd_steps_fit_a_batch(v3: deeplabv3.DeepLabV3) -> None:
    """The trunk is frozen and run once at OS 16 (train mode); ASPP and the classifier learn."""
    v3.train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 2, 2)).repeat_interleave(16, 1).repeat_interleave(16, 2)
    with torch.no_grad():
        high = v3.backbone(x)["high"]
    opt = torch.optim.SGD([*v3.aspp.parameters(), *v3.classifier.parameters()], lr=0.1, momentum=0.9)

    def loss() -> torch.Tensor:
        return F.cross_entropy(F.interpolate(v3.classifier(v3.aspp(high)), size=(32, 32), mode="bilinear"), y)

    losses = fit(loss, opt, 5)
    assert losses[-1] < 0.9 * losses[0], losses
