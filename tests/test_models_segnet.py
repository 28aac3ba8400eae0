"""SegNet tests: the decoder unpools with the encoder's own indices, VGG-16-BN layout and weights, counts, odd sizes.

The full SegNet is built on the meta device except where weights or values are checked; SegNet-Basic is small
enough to run for real.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semseg.models._backbones as backbones
from semseg.errors import ConfigError
from semseg.models import segnet as segnet_module
from semseg.registry import MODELS
from tests.fixtures.training import fit


def _meta(name: str, num_classes: int = 11) -> segnet_module.SegNet:
    with torch.device("meta"):
        return MODELS.build(name, num_classes=num_classes)


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def _conv_params(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def test_exact_parameter_counts_and_their_derivation() -> None:
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
           (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    dec = [(512, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 256),
           (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64)]
    expected = sum(_conv_params(i, o, 3) + 2 * o for i, o in vgg + dec) + _conv_params(64, 11, 3)
    assert expected == 29_449_355
    assert sum(p.numel() for p in _meta("segnet").parameters()) == expected
    assert abs(expected - 29.46e6) / 29.46e6 < 0.001  # ENet's Table 3 figure for SegNet
    basic = _conv_params(3, 64, 7) + 7 * _conv_params(64, 64, 7) + 8 * 128 + _conv_params(64, 11, 1)
    assert basic == 1_416_587 == sum(p.numel() for p in _meta("segnet_basic").parameters())
    assert abs(basic - 1.425e6) / 1.425e6 < 0.006  # the paper's Table 1: 1.425M
    # each class adds the classifier's weights and bias: 3×3×64 + 1 for SegNet, 64 + 1 for SegNet-Basic
    assert sum(p.numel() for p in _meta("segnet", 12).parameters()) - expected == 577
    assert sum(p.numel() for p in _meta("segnet_basic", 12).parameters()) - basic == 65


def test_encoder_is_torchvision_vgg16_bn_features() -> None:
    from torchvision.models import vgg16_bn

    with torch.device("meta"):
        theirs = {k: v.shape for k, v in vgg16_bn(weights=None).features.state_dict().items()}
    model = _meta("segnet")
    ours = {k: v.shape for k, v in model.encoder.features.state_dict().items()}
    assert ours == theirs
    features = model.encoder.features
    assert [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)] == [6, 13, 23, 33, 43]
    assert all(m.return_indices and m.ceil_mode and m.kernel_size == m.stride == 2
               for m in features if isinstance(m, nn.MaxPool2d))
    assert len(_convs(model.encoder)) == 13 and all(c.kernel_size == (3, 3) for c in _convs(model.encoder))


def test_decoder_mirrors_the_encoder_and_ends_in_a_3x3_classifier() -> None:
    model = _meta("segnet")
    widths = [[(c.in_channels, c.out_channels) for c in _convs(stage)] for stage in model.decoder.stages]
    assert widths == [[(512, 512)] * 3, [(512, 512), (512, 512), (512, 256)], [(256, 256), (256, 256), (256, 128)],
                      [(128, 128), (128, 64)], [(64, 64)]]  # conv5_3_D … conv1_2_D of segnet_train.prototxt
    for stage in model.decoder.stages:  # every decoder conv: BN and ReLU, as the release's
        kinds = [type(m) for m in stage]
        assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * (len(kinds) // 3)
    assert model.classifier.kernel_size == (3, 3) and model.classifier.out_channels == 11  # conv1_1_D, no BN
    assert model.input_norm is None and model.output_stride == 32


def test_segnet_basic_is_4_plus_4_stages_of_7x7_64_without_decoder_relu() -> None:
    model = _meta("segnet_basic")
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in _convs(model.encoder)] == (
        [(3, 64, (7, 7), (3, 3))] + [(64, 64, (7, 7), (3, 3))] * 3)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.encoder.modules()) == 4
    assert [type(m) for stage in model.decoder.stages for m in stage] == [nn.Conv2d, nn.BatchNorm2d] * 4
    assert all(c.kernel_size == (7, 7) for c in _convs(model.decoder))
    assert model.classifier.kernel_size == (1, 1) and model.output_stride == 16
    lrn = model.input_norm
    assert isinstance(lrn, nn.LocalResponseNorm) and (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)
    with torch.device("meta"):
        assert MODELS.build("segnet_basic", num_classes=3, lrn=False).input_norm is None


def test_input_lrn_is_caffes_across_channel_formula() -> None:
    """x / (1 + α/n Σ x²)^β over a window of 5 channels centred on each (Caffe ACROSS_CHANNELS, zero-padded)."""
    lrn = _meta("segnet_basic").input_norm.to_empty(device="cpu")
    x = torch.randn(1, 3, 4, 5) * 30
    padded = F.pad(x.square(), (0, 0, 0, 0, 2, 2))
    window = torch.stack([padded[:, c : c + 5].sum(1) for c in range(3)], dim=1)
    torch.testing.assert_close(lrn(x), x / (1 + 1e-4 / 5 * window) ** 0.75)


@pytest.mark.parametrize("name", ["segnet", "segnet_basic"])
def test_each_unpooling_gets_its_encoder_pools_indices_and_size(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder's k-th unpooling receives the very indices tensor (and pre-pool size) of the encoder's k-th
    pool from the bottom, at 45×61, where ceil-mode pools make every size odd somewhere."""
    model = MODELS.build(name, num_classes=3).eval() if name == "segnet_basic" else _meta(name, 3).eval()
    device = "cpu" if name == "segnet_basic" else "meta"
    pooled, unpooled = [], []
    for layer in model.encoder.features:
        if isinstance(layer, nn.MaxPool2d):
            layer.register_forward_hook(lambda m, i, o: pooled.append((o[1], i[0].shape[-2:])))
    real_unpool = F.max_unpool2d

    def spy(x, indices, kernel_size, stride, output_size):
        unpooled.append((indices, tuple(output_size)))
        return real_unpool(x, indices, kernel_size, stride, output_size=output_size)

    monkeypatch.setattr(segnet_module.F, "max_unpool2d", spy)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 45, 61, device=device))["out"]
    assert out.shape == (1, 3, 45, 61)
    assert len(unpooled) == len(pooled) == (5 if name == "segnet" else 4)
    for (idx_used, size_used), (idx_kept, size_kept) in zip(unpooled, reversed(pooled)):
        assert idx_used is idx_kept and size_used == tuple(size_kept)
    assert [s for _, s in pooled] == [(45, 61), (23, 31), (12, 16), (6, 8), (3, 4)][: len(pooled)]


def test_unpooling_puts_each_value_back_at_its_argmax_and_zeros_elsewhere() -> None:
    """The map the first decoder conv sees is the encoder's output scattered to the deepest pool's argmax
    positions: non-zero only there (no learned or bilinear upsampling)."""
    torch.manual_seed(0)
    model = MODELS.build("segnet_basic", num_classes=3).eval()
    seen = {}
    last_pool = [m for m in model.encoder.features if isinstance(m, nn.MaxPool2d)][-1]
    last_pool.register_forward_hook(lambda m, i, o: seen.update(pooled=o[0], indices=o[1]))
    model.decoder.stages[0].register_forward_pre_hook(lambda m, i: seen.update(sparse=i[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 45, 61))
    sparse, indices, pooled = seen["sparse"], seen["indices"], seen["pooled"]
    assert sparse.shape[-2:] == (6, 8) and pooled.shape[-2:] == (3, 4)
    flat = sparse.flatten(2)
    torch.testing.assert_close(flat.gather(2, indices.flatten(2)), pooled.flatten(2), rtol=0, atol=0)
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(2, indices.flatten(2), True)
    assert not flat[~mask].any()  # 3 of every 4 positions (more at the odd edge) are exactly zero


def test_other_indices_give_another_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """The indices matter: unpooling every value to its window's top-left corner instead changes the logits."""
    torch.manual_seed(0)
    model = MODELS.build("segnet_basic", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref = model(x)["out"]
    real_unpool = F.max_unpool2d

    def corner(x, indices, kernel_size, stride, output_size):
        h, w = x.shape[-2:]
        rows = torch.arange(h).mul(2)[:, None] * output_size[-1]
        top_left = (rows + torch.arange(w).mul(2)[None, :]).expand_as(indices)
        return real_unpool(x, top_left, kernel_size, stride, output_size=output_size)

    monkeypatch.setattr(segnet_module.F, "max_unpool2d", corner)
    with torch.no_grad():
        assert (model(x)["out"] - ref).abs().max() > 1e-3


def test_odd_and_tiny_sizes_come_back_whole() -> None:
    model = MODELS.build("segnet_basic", num_classes=4).eval()
    with torch.no_grad():
        for size in [(1, 1), (2, 3), (17, 9), (45, 61)]:
            assert model(torch.randn(2, 3, *size))["out"].shape == (2, 4, *size)
    with torch.device("meta"):
        full = MODELS.build("segnet", num_classes=4).eval()
        feats, _ = full.encoder(torch.empty(1, 3, 45, 61))
    assert feats.shape[-2:] == (2, 2)  # output stride 32 with Caffe's ceil rounding: ⌈45/32⌉, ⌈61/32⌉


def test_release_initialisation() -> None:
    """MSRA (fan-in) weights, zero biases, BN scale 1 and shift 0.001, as the release's fillers."""
    torch.manual_seed(0)
    model = MODELS.build("segnet_basic", num_classes=3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.allclose(b.bias, torch.full_like(b.bias, 1e-3)) for b in bns)
    for conv in _convs(model):
        assert not conv.bias.any()
        fan_in = conv.weight[0].numel()
        assert abs(conv.weight.std().item() * fan_in**0.5 / 2**0.5 - 1) < 0.1


def test_torchvision_vgg16_bn_weights_load_into_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """ImageNet VGG-16-BN (a pre-0.4 file: no num_batches_tracked) lands in the encoder, tensor for tensor."""
    from torchvision.models import VGG16_BN_Weights, vgg16_bn

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in vgg16_bn(weights=None).state_dict().items()
                  if not k.endswith("num_batches_tracked")}
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) if k.startswith("features.") else torch.empty(0)
             for k, s in shapes.items()}
    asked = []
    monkeypatch.setattr(backbones, "_download", lambda weights: asked.append(weights) or state)
    model = MODELS.build("segnet", num_classes=3, pretrained_backbone=True)
    assert asked == [VGG16_BN_Weights.IMAGENET1K_V1]
    for key, value in model.encoder.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key


def test_pretrained_errors_are_one_line_config_errors(tmp_path) -> None:
    with torch.device("meta"), pytest.raises(ConfigError, match="pretrained_backbone: weight file .* does not exist"):
        MODELS.build("segnet", num_classes=3, pretrained_backbone=str(tmp_path / "missing.pt"))
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with torch.device("meta"), pytest.raises(ConfigError, match="weights do not fit the backbone"):
        MODELS.build("segnet", num_classes=3, pretrained_backbone=str(tmp_path / "wrong.pt"))
    with pytest.raises(ConfigError, match="pretrained_backbone: not a parameter of model 'segnet_basic'"):
        MODELS.build("segnet_basic", num_classes=3, pretrained_backbone=True)  # no ImageNet net to take it from


def test_a_few_sgd_steps_fit_a_batch() -> None:
    torch.manual_seed(0)
    model = MODELS.build("segnet_basic", num_classes=3).train()
    x = torch.randn(2, 3, 32, 32)
    y = torch.randint(0, 3, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # the paper's SegNet-Basic settings
    losses = fit(lambda: F.cross_entropy(model(x)["out"], y), opt, 15)
    assert losses[-1] < 0.8 * losses[0], losses
