"""LinkNet-specific tests: the paper's block table and parameter count, the additive links, odd sizes.

LinkNet-18 is small (11.5M), so one real model is built and shared.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import semseg.models._backbones as backbones
from semseg.models import linknet
from semseg.registry import MODELS
from tests.fixtures.training import fit


@pytest.fixture(scope="module")
def net() -> linknet.LinkNet:
    torch.manual_seed(0)
    return MODELS.build("linknet", num_classes=3)


def _basic_trunk(blocks: tuple[int, ...]) -> int:
    """ResNet-18/34 trunk without fc: 7×7 stem, basic blocks of two 3×3 convs; BN = 2 per channel."""
    total, c_in = 49 * 3 * 64 + 2 * 64, 64
    for width, n in zip((64, 128, 256, 512), blocks):
        for i in range(n):
            total += 9 * c_in * width + 9 * width * width + 4 * width
            total += (c_in * width + 2 * width) if c_in != width else 0  # 1×1 projection shortcut
            c_in = width
    return total


def _decoder_block(m: int, n: int) -> int:
    """Fig. 3: 1×1 m→m/4, 3×3 full conv m/4→m/4, 1×1 m/4→n, each + BN (bias-free convs)."""
    q = m // 4
    return m * q + 9 * q * q + q * n + 2 * (q + q + n)


@pytest.mark.parametrize(("name", "blocks"), [("linknet", (2, 2, 2, 2)), ("linknet34", (3, 4, 6, 3))])
def test_param_count_is_the_paper_table(name: str, blocks: tuple[int, ...]) -> None:
    classes = 12
    decoders = sum(_decoder_block(m, n) for m, n in ((512, 256), (256, 128), (128, 64), (64, 64)))
    final = 9 * 64 * 32 + 2 * 32 + 9 * 32 * 32 + 2 * 32 + 4 * 32 * classes + classes
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=classes)
    count = sum(p.numel() for p in model.parameters())
    assert count == _basic_trunk(blocks) + decoders + final
    if name == "linknet":
        assert round(count / 1e6, 1) == 11.5  # paper Table 1


def test_decoder_strides_and_widths(net: linknet.LinkNet) -> None:
    """Decoder i maps encoder i's output width m back to its input width n; decoder 1 keeps the size."""
    widths = [(d.reduce[0].in_channels, d.reduce[0].out_channels, d.expand[0].out_channels, d.up.conv.stride)
              for d in (net.decoder4, net.decoder3, net.decoder2, net.decoder1)]
    assert widths == [(512, 128, 256, (2, 2)), (256, 64, 128, (2, 2)), (128, 32, 64, (2, 2)), (64, 16, 64, (1, 1))]
    assert (net.final_up.conv.in_channels, net.final_up.conv.out_channels, net.final_up.conv.stride) == (64, 32, (2, 2))
    assert (net.classifier.kernel_size, net.classifier.stride) == ((2, 2), (2, 2))


def test_batchnorm_eps_is_the_torch_codes(net: linknet.LinkNet) -> None:
    """models/model.lua: SpatialBatchNormalization(n, 1e-3) in decode() and after the final 3×3 conv;
    SBatchNorm(32) (Torch default 1e-5) after the final full conv; the ResNet-18 encoder 1e-5."""
    decoder = [net.decoder4, net.decoder3, net.decoder2, net.decoder1, net.final_conv]
    eps = {m.eps for d in decoder for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert eps == {1e-3}
    assert net.final_up.bn.eps == 1e-5
    assert {m.eps for m in net.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}
    with torch.device("meta"):
        old = MODELS.build("linknet", num_classes=3, bn_eps=1e-5)  # checkpoints trained before issue 15
    assert {m.eps for m in old.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}


def test_output_stride_32() -> None:
    with torch.device("meta"):
        model = MODELS.build("linknet", num_classes=3)
        feats = model.encoder(torch.empty(1, 3, 45, 61))
    assert MODELS.meta("linknet")["output_stride"] == 32
    assert feats["layer4"].shape[1:] == (512, 2, 2)  # ⌈45/32⌉, ⌈61/32⌉


def test_links_add_encoder_block_inputs_to_decoder_outputs(net: linknet.LinkNet) -> None:
    """Paper §2: the input of encoder block i is added to the output of decoder block i."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, output: bool = True):
        return lambda m, i, o: seen.__setitem__(name, (o if output else i[0]).detach().clone())

    hooks = [getattr(net.encoder, f"layer{k}").register_forward_hook(keep(f"enc{k}_in", False)) for k in (1, 2, 3, 4)]
    hooks += [getattr(net, f"decoder{k}").register_forward_hook(keep(f"dec{k}_out")) for k in (1, 2, 3, 4)]
    hooks += [getattr(net, f"decoder{k}").register_forward_hook(keep(f"dec{k}_in", False)) for k in (1, 2, 3)]
    hooks.append(net.final_up.register_forward_hook(keep("final_in", False)))
    with torch.no_grad():
        net.eval()(torch.randn(1, 3, 45, 61))
    for h in hooks:
        h.remove()
    for k in (4, 3, 2):
        torch.testing.assert_close(seen[f"dec{k - 1}_in"], seen[f"dec{k}_out"] + seen[f"enc{k}_in"])
    torch.testing.assert_close(seen["final_in"], seen["dec1_out"] + seen["enc1_in"])


@pytest.mark.parametrize("size", [(1, 1), (33, 17), (360, 480)])
def test_any_size_gives_the_input_size(net: linknet.LinkNet, size: tuple[int, int]) -> None:
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, *size))["out"].shape == (1, 3, *size)


def test_torchvision_weights_fit_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet18

    with torch.device("meta"):
        tv_state = resnet18(weights=None).state_dict()
        monkeypatch.setattr(backbones, "_download", lambda weights: tv_state)
        MODELS.build("linknet", num_classes=3, pretrained_backbone=True)  # raises on any mismatch


def test_training_steps_reduce_the_loss(net: linknet.LinkNet) -> None:
    """LinkNet is small enough to train end to end here: a few Adam steps fit a tiny batch (paper §4 uses RMSProp)."""
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 8, 8)).repeat_interleave(4, 1).repeat_interleave(4, 2)
    losses = fit(lambda: F.cross_entropy(net(x)["out"], y), opt, 5)
    assert losses[-1] < 0.9 * losses[0], losses
