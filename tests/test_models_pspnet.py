"""PSPNet-specific tests: output stride 8, dilation table, PPM, aux head, deep stem, parameter count.

The ResNet-101 nets are only built on the meta device (shape-only forward passes);
one small PSPNet-50 (3 classes, no dropout) is built for real and shared.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import semseg.models._backbones as backbones
from semseg.errors import ConfigError
from semseg.models import pspnet
from semseg.registry import MODELS
from tests.fixtures.training import fit

NAMES = ("pspnet50", "pspnet101", "pspnet50_deepstem", "pspnet101_deepstem")
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}  # He et al. 2016, Table 1


@pytest.fixture(scope="module")
def psp50() -> pspnet.PSPNet:
    torch.manual_seed(0)
    return MODELS.build("pspnet50", num_classes=3, dropout=0.0)


def resnet_trunk_params(depth: int, deep_stem: bool) -> int:
    """Bottleneck ResNet trunk without fc, from the architecture table (convs bias-free, BN = 2/channel)."""
    if deep_stem:
        stem = 27 * 64 + 9 * 64 * 64 + 9 * 64 * 128 + 2 * (64 + 64 + 128)
        c_in = 128
    else:
        stem, c_in = 49 * 3 * 64 + 2 * 64, 64
    total = stem
    for width, blocks in zip((64, 128, 256, 512), BLOCKS[depth]):
        out = 4 * width
        for i in range(blocks):
            total += c_in * width + 9 * width * width + width * out + 2 * (2 * width + out)
            if i == 0:
                total += c_in * out + 2 * out  # 1×1 projection shortcut
            c_in = out
    return total


@pytest.mark.parametrize("name", NAMES)
def test_param_count_is_the_derivation(name: str) -> None:
    """Trunk from the ResNet table + PPM 4·(2048·512) + 3×3 4096→512 + aux 3×3 1024→256 + classifiers."""
    depth, deep = (101 if "101" in name else 50), name.endswith("deepstem")
    classes = MODELS.meta(name)["paper_kwargs"]["num_classes"]
    ppm = 4 * (2048 * 512 + 2 * 512)
    head = 9 * 4096 * 512 + 2 * 512 + 513 * classes
    aux = 9 * 1024 * 256 + 2 * 256 + 257 * classes
    expected = resnet_trunk_params(depth, deep) + ppm + head + aux
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=classes)
    assert sum(p.numel() for p in model.parameters()) == expected == MODELS.meta(name)["paper_params"]
    with torch.device("meta"):
        no_aux = MODELS.build(name, num_classes=classes, aux=False)
    assert sum(p.numel() for p in no_aux.parameters()) == expected - aux


@pytest.mark.parametrize("name", NAMES)
def test_output_stride_8_and_dilation_table(name: str) -> None:
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=4)
        feats = model.backbone(torch.empty(1, 3, 45, 61))
    assert MODELS.meta(name)["output_stride"] == 8
    assert feats["layer4"].shape[-2:] == feats["layer3"].shape[-2:] == (6, 8)  # ⌈45/8⌉, ⌈61/8⌉
    assert feats["layer4"].shape[1] == 2048 and feats["layer3"].shape[1] == 1024
    for layer, rate in (("layer3", 2), ("layer4", 4)):
        for block in getattr(model.backbone, layer):
            assert block.conv2.dilation == block.conv2.padding == (rate, rate)
            assert block.conv2.stride == (1, 1)
            if block.downsample is not None:
                assert block.downsample[0].stride == (1, 1)


def test_deep_stem_layout() -> None:
    with torch.device("meta"):
        model = MODELS.build("pspnet50_deepstem", num_classes=4)
    convs = [m for m in model.backbone.stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 64, (3, 3), (2, 2)), (64, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1))]
    assert model.backbone.layer1[0].conv1.in_channels == 128
    assert model.backbone.layer1[0].downsample[0].in_channels == 128
    keys = {k for k in model.backbone.state_dict() if k.startswith("stem.")}
    assert {"stem.0.weight", "stem.1.running_mean", "stem.3.weight", "stem.7.bias"} <= keys  # mmseg v1c layout


def test_pyramid_pooling_bins_and_channels(psp50: pspnet.PSPNet) -> None:
    sizes = []
    hooks = [stage[0].register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
             for stage in psp50.ppm.stages]
    with torch.no_grad():
        psp50.eval()(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert sizes == [(1, 1), (2, 2), (3, 3), (6, 6)]
    assert [stage[1][0].out_channels for stage in psp50.ppm.stages] == [512] * 4
    assert psp50.ppm.out_channels == 4096 and psp50.head[0][0].in_channels == 4096


def _official_forward(model: pspnet.PSPNet, x: torch.Tensor, corners: bool) -> torch.Tensor:
    """hszhao/semseg model/pspnet.py in eval mode: PPM and logits upsampled with F.interpolate(align_corners)."""
    f = model.backbone(x)["layer4"]
    up = [stage(f) for stage in model.ppm.stages]
    pooled = [F.interpolate(p, f.shape[-2:], mode="bilinear", align_corners=corners) for p in up]
    h, w = (x.shape[-2] - 1) // 8 * 8 + 1, (x.shape[-1] - 1) // 8 * 8 + 1  # the official (8k+1) output size
    return F.interpolate(model.head(torch.cat([f] + pooled, 1)), (h, w), mode="bilinear", align_corners=corners)


@pytest.mark.parametrize("name", NAMES)
def test_align_corners_default_is_the_official_code(name: str) -> None:
    with torch.device("meta"):
        assert MODELS.build(name, num_classes=3).align_corners is True
        assert MODELS.build(name, num_classes=3).ppm.align_corners is True
        assert MODELS.build(name, num_classes=3, align_corners=False).ppm.align_corners is False


def test_logits_are_the_official_ones_at_8k_plus_1(psp50: pspnet.PSPNet) -> None:
    """Same weights, 41×57 (8k+1, the sizes the official code takes): our logits are its logits."""
    x = torch.randn(1, 3, 41, 57)
    with torch.no_grad():
        ours = psp50.eval()(x)["out"]
        official = _official_forward(psp50, x, corners=True)
        half_pixel = _official_forward(psp50, x, corners=False)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-6)
    assert (ours - half_pixel).abs().max() > 1e-3  # the setting matters: this is what issue 15 caught
    psp50.align_corners = psp50.ppm.align_corners = False
    try:
        with torch.no_grad():
            torch.testing.assert_close(psp50(x)["out"], half_pixel, rtol=0, atol=1e-6)
    finally:
        psp50.align_corners = psp50.ppm.align_corners = True


def test_aux_head_in_training_only_or_absent(psp50: pspnet.PSPNet) -> None:
    """``aux`` is a training device (§3.4): returned in train mode, not even computed in eval mode."""
    x = torch.randn(2, 3, 33, 40)
    calls: list[int] = []
    hook = psp50.aux.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        out = psp50.train()(x)
        assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 3, 33, 40)
        assert calls == [1]
        assert set(psp50.eval()(x)) == {"out"}
    hook.remove()
    assert calls == [1], "eval mode ran the aux head although inference throws it away"
    no_aux = pspnet.PSPNet(50, 3, aux=False).eval()
    with torch.no_grad():
        assert set(no_aux(x)) == {"out"}


def test_deep_stem_refuses_torchvision_weights_and_loads_a_local_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="pretrained_backbone"):
        pspnet.PSPNet(50, 3, deep_stem=True, pretrained_backbone=True)
    torch.manual_seed(1)
    source = pspnet.PSPNet(50, 3, deep_stem=True)
    path = tmp_path / "v1c.pth"
    torch.save({"state_dict": source.state_dict()}, path)  # whole-model file: backbone.* keys
    loaded = backbones.DeepStemResNet(50, str(path))
    torch.testing.assert_close(loaded.stem[0].weight, source.backbone.stem[0].weight)
    torch.testing.assert_close(loaded.layer4[2].conv3.weight, source.backbone.layer4[2].conv3.weight)
    torch.save({"stem.0.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ConfigError, match="pretrained_backbone"):
        backbones.DeepStemResNet(50, str(path))


def test_torchvision_weights_fit_the_plain_trunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet101

    with torch.device("meta"):
        tv_state = resnet101(weights=None).state_dict()
        monkeypatch.setattr(backbones, "_download", lambda weights: tv_state)
        MODELS.build("pspnet101", num_classes=4, pretrained_backbone=True)  # raises on any mismatch


def test_bad_dropout_is_a_config_error() -> None:
    with torch.device("meta"), pytest.raises(ConfigError, match="model.params.dropout"):
        MODELS.build("pspnet50", num_classes=4, dropout=1.5)


def test_sgd_with_aux_loss_reduces_the_loss(psp50: pspnet.PSPNet) -> None:
    """A few SGD steps on one tiny batch fit it better; loss = main + 0.4·aux (§3.4).

    The trunk is frozen and run once (train-mode BN is deterministic for a fixed batch),
    so only the PPM and the two heads are trained: fast, and still every head layer.
    """
    psp50.train()
    # labels constant on 8×8 cells: learnable from stride-8 features, unlike per-pixel noise
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    with torch.no_grad():
        feats = psp50.backbone(x)
    heads = [psp50.ppm, psp50.head, psp50.aux]
    opt = torch.optim.SGD([p for m in heads for p in m.parameters()], lr=0.1, momentum=0.9)

    def main_plus_aux_loss() -> torch.Tensor:
        out = F.interpolate(psp50.head(psp50.ppm(feats["layer4"])), size=(32, 32), mode="bilinear")
        aux = F.interpolate(psp50.aux(feats["layer3"]), size=(32, 32), mode="bilinear")
        return F.cross_entropy(out, y) + 0.4 * F.cross_entropy(aux, y)

    losses = fit(main_plus_aux_loss, opt, 5)
    assert losses[-1] < 0.9 * losses[0], losses
