"""FCN-specific tests: caffe crop offsets, output strides, bilinear upsamplers, VGG16 weight remap.

FCN-VGG16 has 134M parameters, so only one real model is built (module fixture,
inputs ≤ 64 px); everything else runs on the meta device or on small tensors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semseg.models._backbones as backbones
from semseg.errors import ConfigError
from semseg.models import fcn
from semseg.models._blocks import bilinear_kernel
from semseg.registry import MODELS
from tests.fixtures.training import fit


@pytest.fixture(scope="module")
def fcn8s() -> fcn.FCN:
    torch.manual_seed(0)
    return MODELS.build("fcn8s", num_classes=3).eval()


def _coord_map(layers: list[nn.Module]) -> tuple[float, float]:
    """(a, b) with ``index_out = a * x_in + b``, composed as caffe's ``coord_map`` does."""
    a, b = 1.0, 0.0
    for m in layers:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
            a, b = a / s, (b + p - (k - 1) / 2) / s
    return a, b


def _deconv(a: float, b: float, k: int, s: int) -> tuple[float, float]:
    return a * s, b * s + (k - 1) / 2


@pytest.mark.parametrize("skips", [(), ("pool4",), ("pool4", "pool3")])
def test_crop_offsets_match_coord_map(skips: tuple[str, ...]) -> None:
    """Re-derive the official nets' crop offsets (19/27/31, pool4 5, pool3 9) from the layers."""
    with torch.device("meta"):
        model = fcn.FCN(4, skips)
    feats = list(model.backbone.features)
    maps = {"pool3": _coord_map(feats[: fcn._POOL3]), "pool4": _coord_map(feats[: fcn._POOL4])}
    a, b = _coord_map(feats + [model.backbone.fc6, model.backbone.fc7, model.score_fr])
    for name in skips:
        up = model.skip_ups[name]
        a, b = _deconv(a, b, up.kernel_size[0], up.stride[0])
        assert maps[name][0] == a
        assert maps[name][1] - b == fcn._SKIP_OFFSET[name]
    a, b = _deconv(a, b, model.final_kernel.shape[-1], model.output_stride)
    assert (a, b) == (1.0, fcn._FINAL_OFFSET[model.output_stride])


def test_output_strides_32_16_8(fcn8s: fcn.FCN) -> None:
    """32 more input pixels give 1 more coarse score, 2 more at pool4 and 4 more at pool3."""
    sizes: dict[str, list[int]] = {"score_fr": [], "pool4": [], "pool3": []}
    hooks = [fcn8s.score_fr.register_forward_hook(lambda m, i, o: sizes["score_fr"].append(o.shape[-1]))]
    for name in ("pool4", "pool3"):
        hooks.append(fcn8s.skip_ups[name].register_forward_hook(lambda m, i, o, n=name: sizes[n].append(o.shape[-1])))
    with torch.no_grad():
        for width in (32, 64):
            assert fcn8s(torch.randn(1, 3, 20, width))["out"].shape == (1, 3, 20, width)
    for h in hooks:
        h.remove()
    steps = {k: v[1] - v[0] for k, v in sizes.items()}
    assert steps == {"score_fr": 1, "pool4": 2, "pool3": 4}
    assert [MODELS.meta(n)["output_stride"] for n in ("fcn32s", "fcn16s", "fcn8s")] == [32, 16, 8]


def test_upsamplers_are_bilinear_and_final_one_is_fixed(fcn8s: fcn.FCN) -> None:
    for up in fcn8s.skip_ups.values():
        assert up.weight.requires_grad and up.bias is None
        torch.testing.assert_close(up.weight, bilinear_kernel(3, 3, 4))
    assert "final_kernel" not in dict(fcn8s.named_parameters())
    ramp = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 3, 6, 6)  # linear in x: bilinear keeps it linear
    out = F.conv_transpose2d(ramp, fcn8s.final_kernel, stride=8, groups=3)[..., 16:-16, 16:-16]
    diffs = out[0, :, 0].diff(dim=-1)
    torch.testing.assert_close(diffs, torch.full_like(diffs, 1 / 8))


def test_skip_scores_start_at_zero(fcn8s: fcn.FCN) -> None:
    """Staged training (paper §4.2): a new skip adds nothing until it is trained."""
    for score in fcn8s.skip_scores.values():
        assert not score.weight.any() and not score.bias.any()
    assert fcn8s.score_fr.weight.std() > 0


def test_torchvision_vgg16_weights_fit_the_trunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import vgg16

    with torch.device("meta"):
        tv_state = vgg16(weights=None).state_dict()
        trunk = fcn.VGG16Trunk()
    monkeypatch.setattr(backbones, "_download", lambda weights: tv_state)
    backbones.load_pretrained(trunk, True, None, fcn._torchvision_vgg16_remap)  # raises on any mismatch


def test_fc6_remap_is_the_same_linear_map() -> None:
    linear = nn.Linear(512 * 7 * 7, 8)
    state = fcn._torchvision_vgg16_remap({"classifier.0.weight": linear.weight, "classifier.0.bias": linear.bias})
    x = torch.randn(2, 512, 7, 7)
    conv = F.conv2d(x, state["fc6.weight"], state["fc6.bias"])
    torch.testing.assert_close(conv.flatten(1), linear(x.flatten(1)))


def test_wrong_weight_file_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with torch.device("meta"), pytest.raises(ConfigError, match="pretrained_backbone"):
        fcn.VGG16Trunk(str(path))


def test_sgd_on_the_heads_reduces_the_loss(fcn8s: fcn.FCN) -> None:
    """A few SGD steps on one tiny batch fit it better (trunk frozen to keep this fast)."""
    fcn8s.backbone.requires_grad_(False)
    heads = [p for p in fcn8s.parameters() if p.requires_grad]
    opt = torch.optim.SGD(heads, lr=0.05, momentum=0.9)
    x, y = torch.randn(1, 3, 32, 32), torch.randint(0, 3, (1, 32, 32))
    losses = fit(lambda: F.cross_entropy(fcn8s(x)["out"], y), opt, 4)
    assert losses[-1] < losses[0]
