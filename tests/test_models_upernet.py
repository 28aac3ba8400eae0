"""UPerNet tests: the FPN's four levels and their fusion at 1/4, the release's PPM order and width, the derived count.

ResNet-101 is built on the meta device only; one small ResNet-50 net (3 classes) is built for real.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import semseg.models._backbones as backbones
from semseg.errors import ConfigError
from semseg.models import upernet
from semseg.registry import MODELS
from tests.fixtures.training import fit
from tests.test_models_pspnet import resnet_trunk_params

NAMES = ("upernet_resnet50", "upernet_resnet101", "upernet_resnet50_deepstem", "upernet_resnet101_deepstem")


@pytest.fixture(scope="module")
def net() -> upernet.UPerNet:
    torch.manual_seed(0)
    return MODELS.build("upernet_resnet50", num_classes=3)


def decoder_params(num_classes: int, fpn: int = 512) -> int:
    """PPM (four 1×1 2048→512 + 3×3 4096→fpn) + FPN (1×1 laterals, 3×3 smoothing) + 3×3 4·fpn→fpn fuse + classifier."""
    bn = 2
    ppm = 4 * (2048 * 512 + bn * 512) + 9 * 4096 * fpn + bn * fpn
    laterals = sum(c * fpn + bn * fpn for c in (256, 512, 1024)) + 3 * (9 * fpn * fpn + bn * fpn)
    return ppm + laterals + 9 * 4 * fpn * fpn + bn * fpn + (fpn + 1) * num_classes


@pytest.mark.parametrize("name", NAMES)
def test_param_count_is_the_derivation(name: str) -> None:
    depth = 101 if "101" in name else 50
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=150)
    expected = resnet_trunk_params(depth, name.endswith("deepstem")) + decoder_params(150)
    assert sum(p.numel() for p in model.parameters()) == expected == MODELS.meta(name)["paper_params"]
    assert decoder_params(0) == upernet.DECODER_PARAMS


def test_the_released_decoder_is_512_wide_and_256_is_upernet_lite() -> None:
    """models.py build_decoder: 'upernet' → fpn_dim 512 (the released configs), 'upernet_lite' → 256."""
    assert decoder_params(150) == 40_590_486  # decoder_epoch_*.pth of ade20k-resnet50/101-upernet
    assert resnet_trunk_params(50, True) + decoder_params(150) == 64_222_294
    with torch.device("meta"):
        lite = MODELS.build("upernet_resnet50", num_classes=150, fpn_dim=256)
        full = MODELS.build("upernet_resnet50_deepstem", num_classes=150)
    assert sum(p.numel() for p in lite.parameters()) == resnet_trunk_params(50, False) + decoder_params(150, 256)
    assert decoder_params(150, 256) == 18_265_750  # what upernet_resnet50 was before it followed the release
    assert lite.fuse[0].in_channels == 4 * 256 and full.fuse[0].in_channels == 4 * 512
    assert full.ppm.fuse[0].out_channels == 512 and [m[0].out_channels for m in full.fpn.lateral] == [512] * 3
    assert full.backbone.layer1[0].conv1.in_channels == 128 and full.backbone.stem[6].out_channels == 128


def test_fpn_levels_run_top_down_and_fuse_at_a_quarter() -> None:
    """45×61 input: stages at 12×16, 6×8, 3×4, 2×2; every FPN level is 512 channels; fused map at 1/4."""
    seen: dict[str, tuple[int, ...]] = {}
    with torch.device("meta"):
        model = MODELS.build("upernet_resnet101", num_classes=4).eval()
        hooks = [model.ppm.register_forward_hook(lambda m, i, o: seen.__setitem__("top", tuple(o.shape))),
                 model.fuse.register_forward_hook(lambda m, i, o: seen.__setitem__("fuse_in", tuple(i[0].shape)))]
        hooks += [s.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(f"smooth{k}", tuple(o.shape)))
                  for k, s in enumerate(model.fpn.smooth)]
        out = model(torch.empty(1, 3, 45, 61))["out"]
    for h in hooks:
        h.remove()
    assert seen["top"] == (1, 512, 2, 2)  # ⌈45/32⌉, ⌈61/32⌉
    assert [seen[f"smooth{k}"] for k in range(3)] == [(1, 512, 12, 16), (1, 512, 6, 8), (1, 512, 3, 4)]
    assert seen["fuse_in"] == (1, 2048, 12, 16) and out.shape == (1, 4, 45, 61)
    assert MODELS.meta("upernet_resnet101")["output_stride"] == 4


def test_ppm_convolves_after_upsampling_as_the_release(net: upernet.UPerNet) -> None:
    shapes = []
    hook = net.ppm.convs[3].register_forward_hook(lambda m, i, o: shapes.append((tuple(i[0].shape), tuple(o.shape))))
    with torch.no_grad():
        net.eval()(torch.randn(1, 3, 64, 96))
    hook.remove()
    assert shapes == [((1, 2048, 2, 3), (1, 512, 2, 3))]  # the 6×6 bin, already back at layer4's 2×3
    assert net.ppm.fuse[0].in_channels == 2048 + 4 * 512 and net.ppm.fuse[0].kernel_size == (3, 3)


def test_top_down_pathway_adds_the_upsampled_level(net: upernet.UPerNet) -> None:
    """The finest smoothing conv sees lateral(layer1) + up(f2), where f2 itself is lateral(layer2) + up(f3)..."""
    x = torch.randn(1, 3, 64, 64)
    captured = []
    hook = net.fpn.smooth[0].register_forward_hook(lambda m, i, o: captured.append(i[0]))
    with torch.no_grad():
        net.eval()
        net(x)
        feats = net.backbone(x)
        f = net.ppm(feats["layer4"])
        for i, stage in reversed(list(enumerate(("layer1", "layer2", "layer3")))):
            lat = net.fpn.lateral[i](feats[stage])
            f = lat + F.interpolate(f, size=lat.shape[-2:], mode="bilinear", align_corners=False)
    hook.remove()
    torch.testing.assert_close(captured[0], f)


def test_bad_bins_are_a_one_line_config_error() -> None:
    with torch.device("meta"), pytest.raises(ConfigError, match="model.params.bins:"):
        MODELS.build("upernet_resnet50", num_classes=4, bins=[1, 0])
    with torch.device("meta"), pytest.raises(ConfigError, match="model.params.fpn_dim:"):
        MODELS.build("upernet_resnet50", num_classes=4, fpn_dim=0)


def test_deep_stem_trunk_is_undilated_and_refuses_torchvision_weights() -> None:
    """The release's encoder: stride 32 (no dilation), stages at 1/4 … 1/32 as the plain trunk."""
    with torch.device("meta"):
        model = MODELS.build("upernet_resnet50_deepstem", num_classes=4)
        feats = model.backbone(torch.empty(1, 3, 64, 96))
    assert [tuple(feats[s].shape[-2:]) for s in upernet.STAGES] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert all(b.conv2.dilation == (1, 1) for layer in upernet.STAGES for b in getattr(model.backbone, layer))
    with torch.device("meta"), pytest.raises(ConfigError, match="no deep-stem"):
        MODELS.build("upernet_resnet101_deepstem", num_classes=4, pretrained_backbone=True)


def test_torchvision_weights_fit_the_trunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet50

    with torch.device("meta"):
        tv_state = resnet50(weights=None).state_dict()
        monkeypatch.setattr(backbones, "_download", lambda weights: tv_state)
        MODELS.build("upernet_resnet50", num_classes=4, pretrained_backbone=True)  # raises on any mismatch


def test_a_few_sgd_steps_fit_a_batch(net: upernet.UPerNet) -> None:
    """The trunk is frozen and run once; the decoder learns."""
    net.train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 4, 4)).repeat_interleave(16, 1).repeat_interleave(16, 2)
    with torch.no_grad():
        stages = [net.backbone(x)[s] for s in upernet.STAGES]
    params = [*net.ppm.parameters(), *net.fpn.parameters(), *net.fuse.parameters(), *net.classifier.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)

    def loss() -> torch.Tensor:
        logits = net.classifier(net.fuse(net.fpn(stages, net.ppm(stages[-1]))))
        return F.cross_entropy(F.interpolate(logits, size=(64, 64), mode="bilinear"), y)

    losses = fit(loss, opt, 5)
    assert losses[-1] < 0.9 * losses[0], losses
