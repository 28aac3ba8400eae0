"""UPerNet tests: the FPN's four levels and their fusion at 1/4, the release's PPM order, the derived count.

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

NAMES = ("upernet_resnet50", "upernet_resnet101")


@pytest.fixture(scope="module")
def net() -> upernet.UPerNet:
    torch.manual_seed(0)
    return MODELS.build("upernet_resnet50", num_classes=3)


def decoder_params(num_classes: int) -> int:
    """PPM (four 1×1 2048→512 + 3×3 4096→256) + FPN (1×1 laterals, 3×3 smoothing) + 3×3 1024→256 fuse + classifier."""
    bn = 2
    ppm = 4 * (2048 * 512 + bn * 512) + 9 * 4096 * 256 + bn * 256
    fpn = sum(c * 256 + bn * 256 for c in (256, 512, 1024)) + 3 * (9 * 256 * 256 + bn * 256)
    return ppm + fpn + 9 * 1024 * 256 + bn * 256 + 257 * num_classes


@pytest.mark.parametrize("name", NAMES)
def test_param_count_is_the_derivation(name: str) -> None:
    depth = 101 if "101" in name else 50
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=150)
    expected = resnet_trunk_params(depth, False) + decoder_params(150)
    assert sum(p.numel() for p in model.parameters()) == expected == MODELS.meta(name)["paper_params"]
    assert decoder_params(0) == upernet.DECODER_PARAMS


def test_fpn_levels_run_top_down_and_fuse_at_a_quarter() -> None:
    """45×61 input: stages at 12×16, 6×8, 3×4, 2×2; every FPN level is 256 channels; fused map at 1/4."""
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
    assert seen["top"] == (1, 256, 2, 2)  # ⌈45/32⌉, ⌈61/32⌉
    assert [seen[f"smooth{k}"] for k in range(3)] == [(1, 256, 12, 16), (1, 256, 6, 8), (1, 256, 3, 4)]
    assert seen["fuse_in"] == (1, 1024, 12, 16) and out.shape == (1, 4, 45, 61)
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
