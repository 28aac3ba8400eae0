"""DenseASPP tests: the dilated DenseNet at stride 8, the dense connectivity and rates of the head, the count.

DenseNet-161 is built on the meta device only; one small DenseNet-121 net (3 classes) is built for real.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import semseg.models._backbones as backbones
from semseg.errors import ConfigError
from semseg.models import denseaspp
from semseg.registry import MODELS
from tests.fixtures.training import fit

NAMES = ("denseaspp_densenet121", "denseaspp_densenet161")
# (torchvision features params, channels after block 4, d_feature0, d_feature1) per DenseNet
SPEC = {121: (6_953_856, 1024, 128, 64), 161: (26_472_000, 2208, 512, 128)}


@pytest.fixture(scope="module")
def net() -> denseaspp.DenseASPP:
    torch.manual_seed(0)
    return MODELS.build("denseaspp_densenet121", num_classes=3, dropout=0.0)


@pytest.mark.parametrize("name", NAMES)
def test_param_count_is_torchvisions_trunk_plus_the_release_head(name: str) -> None:
    from torchvision.models import densenet

    depth = int(name[-3:])
    tv_features, channels, mid, out = SPEC[depth]
    with torch.device("meta"):
        tv = getattr(densenet, f"densenet{depth}")(weights=None).features
        model = MODELS.build(name, num_classes=19)
    assert sum(p.numel() for p in tv.parameters()) == tv_features
    half = channels // 2
    trunk = tv_features - 2 * channels + (2 * channels + channels * half) + 2 * half  # norm5 → transition4 + norm5
    head = sum((2 * (half + i * out) if i else 0) + (half + i * out + 1) * mid + 2 * mid + (9 * mid + 1) * out
               for i in range(5))
    expected = trunk + head + (half + 5 * out + 1) * 19
    assert sum(p.numel() for p in model.parameters()) == expected == MODELS.meta(name)["paper_params"]


def test_161_state_dict_is_the_size_of_the_released_checkpoint() -> None:
    """README: DenseASPP161 is 142.7 MB; parameters + BN running statistics in float32 give 142.5 MB."""
    with torch.device("meta"):
        model = MODELS.build("denseaspp_densenet161", num_classes=19)
    floats = sum(t.numel() for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert 142.3e6 < 4 * floats < 142.7e6


@pytest.mark.parametrize("name", NAMES)
def test_trunk_runs_at_stride_8_with_blocks_3_and_4_dilated(name: str) -> None:
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=4)
        feats = model.backbone(torch.empty(1, 3, 64, 96))
    f = model.backbone.features
    assert feats.shape[-2:] == (8, 12) and feats.shape[1] == SPEC[int(name[-3:])][1] // 2
    assert isinstance(f.transition2.pool, torch.nn.Identity) and isinstance(f.transition3.pool, torch.nn.Identity)
    assert not isinstance(f.transition1.pool, torch.nn.Identity)
    assert {layer.conv2.dilation for layer in f.denseblock2.children()} == {(1, 1)}
    assert {layer.conv2.dilation for layer in f.denseblock3.children()} == {(2, 2)}
    assert {layer.conv2.padding for layer in f.denseblock4.children()} == {(4, 4)}
    assert list(dict(f.named_children()))[-2:] == ["transition4", "norm5"]


@pytest.mark.parametrize("name", NAMES)
def test_head_layers_are_densely_connected_at_the_papers_rates(name: str) -> None:
    _, channels, mid, out = SPEC[int(name[-3:])]
    with torch.device("meta"):
        head = MODELS.build(name, num_classes=4).aspp
    convs = [[m for m in layer if isinstance(m, torch.nn.Conv2d)] for layer in head.layers]
    assert [c[1].dilation[0] for c in convs] == [3, 6, 12, 18, 24]
    assert [c[0].in_channels for c in convs] == [channels // 2 + i * out for i in range(5)]
    assert {(c[0].out_channels, c[1].out_channels) for c in convs} == {(mid, out)}
    assert not isinstance(head.layers[0][0], torch.nn.BatchNorm2d)
    assert all(isinstance(layer[0], torch.nn.BatchNorm2d) for layer in head.layers[1:])
    assert head.out_channels == channels // 2 + 5 * out


def test_each_layer_sees_every_earlier_output(net: denseaspp.DenseASPP) -> None:
    x = torch.randn(1, 3, 64, 64)
    inputs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: inputs.append((i[0], o))) for layer in net.aspp.layers]
    with torch.no_grad():
        net.eval()(x)
        trunk = torch.relu(net.backbone(x))
    for h in hooks:
        h.remove()
    torch.testing.assert_close(inputs[0][0], trunk)
    for k in range(1, 5):  # layer k's input = [out_{k-1}, …, out_0, trunk]
        expected = torch.cat([inputs[j][1] for j in reversed(range(k))] + [trunk], dim=1)
        torch.testing.assert_close(inputs[k][0], expected)


def test_bad_settings_are_one_line_config_errors() -> None:
    with torch.device("meta"):
        with pytest.raises(ConfigError, match="model.params.rates:"):
            MODELS.build("denseaspp_densenet121", num_classes=4, rates=[3, 0])
        with pytest.raises(ConfigError, match="model.params.dropout:"):
            MODELS.build("denseaspp_densenet121", num_classes=4, dropout=1.0)


def test_torchvision_weights_in_legacy_key_names_fit_the_trunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's files say 'denselayer1.norm.1.weight'; the trunk has 'denselayer1.norm1.weight'."""
    from torchvision.models import densenet121

    state = densenet121(weights=None).state_dict()
    legacy = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v for k, v in state.items()
              if not k.endswith("num_batches_tracked")}  # as in the pre-0.4 file
    assert any("norm.1" in k for k in legacy)
    monkeypatch.setattr(backbones, "_download", lambda weights: legacy)
    model = MODELS.build("denseaspp_densenet121", num_classes=4, pretrained_backbone=True)
    got = model.backbone.features.denseblock3.denselayer5.conv2.weight
    assert torch.equal(got, state["features.denseblock3.denselayer5.conv2.weight"])
    assert torch.equal(model.backbone.features.conv0.weight, state["features.conv0.weight"])


def test_a_few_sgd_steps_fit_a_batch(net: denseaspp.DenseASPP) -> None:
    """The trunk is frozen and run once; the head and classifier learn."""
    net.train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    with torch.no_grad():
        feats = net.backbone(x)
    opt = torch.optim.SGD([*net.aspp.parameters(), *net.classifier.parameters()], lr=0.01, momentum=0.9)

    def loss() -> torch.Tensor:
        return F.cross_entropy(F.interpolate(net.classifier(net.aspp(feats)), size=(32, 32), mode="bilinear"), y)

    losses = fit(loss, opt, 5)
    assert losses[-1] < 0.9 * losses[0], losses
