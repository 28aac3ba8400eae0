"""LRN tests: six C-channel label maps at strides 32…1, each stage fed by the previous map and the right
encoder feature, the multi-resolution loss over the stages, the parameter derivation, VGG-16-BN weights.

One small LRN (3 classes) is built for real and shared.
"""

from __future__ import annotations

import pytest
import torch

import semseg.models._backbones as backbones
from semseg.config import LossConfig
from semseg.losses import LOSSES, build_criterion
from semseg.losses.criterion import target_at
from semseg.models import lrn
from semseg.models._blocks import resize_to
from semseg.registry import MODELS
from tests.fixtures.training import fit

VGG16_CONVS = ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512))  # Simonyan & Zisserman, D


@pytest.fixture(scope="module")
def net() -> lrn.LRN:
    torch.manual_seed(0)
    return MODELS.build("lrn", num_classes=3)


def lrn_params(num_classes: int) -> int:
    """VGG-16 convs (bias) + BN; s1 3×3 512→C; per stage 3×3 skip→C + BN and 3×3 2C→C, both convs with bias."""
    c = num_classes
    encoder = sum(9 * a * b + b + 2 * b for a, b in VGG16_CONVS)
    stages = sum(9 * s * c + 2 * c + 9 * 2 * c * c + c for s in (512, 512, 256, 128, 64))
    return encoder + 9 * 512 * c + c + stages


@pytest.mark.parametrize("num_classes", [11, 21])
def test_param_count_is_the_derivation(num_classes: int) -> None:
    with torch.device("meta"):
        model = MODELS.build("lrn", num_classes=num_classes)
    assert sum(p.numel() for p in model.parameters()) == lrn_params(num_classes)
    assert lrn_params(11) == 14_930_618 == MODELS.meta("lrn")["paper_params"]


@pytest.mark.parametrize("size", [(64, 64), (45, 61)])
def test_six_label_maps_at_strides_32_to_1_in_training_only_out_in_eval(net: lrn.LRN, size: tuple[int, int]) -> None:
    net.train()
    out = net(torch.randn(2, 3, *size))
    h, w = size
    expected = {"out": (h, w)}
    for stride in lrn.STRIDES:  # ceil-mode pools: ⌈H / stride⌉
        expected[f"aux_{stride}"] = (-(-h // stride), -(-w // stride))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == expected
    assert all(v.shape[:2] == (2, 3) for v in out.values())  # every stage is a C-channel label map
    net.eval()
    with torch.no_grad():
        assert set(net(torch.randn(1, 3, *size))) == {"out"}
    net.train()


def test_each_stage_refines_the_previous_map_with_the_matching_encoder_feature(net: lrn.LRN) -> None:
    """s_k = conv3×3(concat(up(s_{k-1}), m(f_{7-k}))), f = conv5_3 (512), conv4_3 (512), conv3_3, conv2_2, conv1_2."""
    net.eval()
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [r.register_forward_hook(lambda m, i, o, k=k: seen.update({k: (i[0], i[1])}))
             for k, r in enumerate(net.refines)]
    predicts = []
    hooks += [r.predict.register_forward_hook(lambda m, i, o: predicts.append(i[0])) for r in net.refines]
    with torch.no_grad():
        net(torch.randn(1, 3, 48, 80))
    for hook in hooks:
        hook.remove()
    assert [tuple(seen[k][1].shape[1:]) for k in range(5)] == [(512, 3, 5), (512, 6, 10), (256, 12, 20),
                                                               (128, 24, 40), (64, 48, 80)]
    assert [tuple(seen[k][0].shape[1:]) for k in range(5)] == [(3, 2, 3), (3, 3, 5), (3, 6, 10), (3, 12, 20),
                                                               (3, 24, 40)]
    for k in range(5):  # the first C channels of each predictor's input are the upsampled coarser map
        coarse, skip = seen[k]
        torch.testing.assert_close(predicts[k][:, :3], resize_to(coarse, skip.shape[-2:], True))
        torch.testing.assert_close(predicts[k][:, 3:], net.refines[k].reduce(skip))
    pools = [m for m in net.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 5 and all(m.ceil_mode for m in pools)
    net.train()


def test_the_multi_resolution_loss_sums_every_stage_against_the_resized_target(net: lrn.LRN) -> None:
    torch.manual_seed(1)
    net.train()
    x, target = torch.randn(2, 3, 45, 61), torch.randint(0, 3, (2, 45, 61))
    target[:, :10] = 255
    out = net(x)
    ce = LOSSES.build("cross_entropy", ignore_index=255)
    expected = sum(ce(v, target_at(target, v.shape[-2:])) for v in out.values())
    total = build_criterion(LossConfig(aux_weight=1.0), 255)(out, target)
    torch.testing.assert_close(total, expected)
    total.backward()
    assert net.coarse.weight.grad is not None and net.coarse.weight.grad.abs().sum() > 0  # s1's own loss reaches it
    net.zero_grad()


def test_torchvision_vgg16_bn_weights_fit_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import vgg16_bn

    with torch.device("meta"):
        state = vgg16_bn(weights=None).state_dict()
        monkeypatch.setattr(backbones, "_download", lambda weights: state)
        model = MODELS.build("lrn", num_classes=4, pretrained_backbone=True)  # raises on any mismatch
    assert set(model.features.state_dict()) == {k[len("features."):] for k in state if k.startswith("features.")}


def test_a_few_sgd_steps_on_all_stages_fit_a_batch() -> None:
    torch.manual_seed(0)
    model = MODELS.build("lrn", num_classes=3).train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    crit = build_criterion(LossConfig(aux_weight=1.0), 255)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = fit(lambda: crit(model(x), y), opt, 15)
    assert losses[-1] < 0.7 * losses[0], losses
