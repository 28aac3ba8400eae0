"""PSANet tests: psa_mask against loops written from the release's C++ operator, attention shapes, the count.

ResNet-101 is built on the meta device only; one small ResNet-50 net (3 classes, 15×15 mask) is built for real.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semseg.errors import ConfigError
from semseg.models import psanet
from semseg.registry import MODELS
from tests.fixtures.training import fit
from tests.test_models_pspnet import resnet_trunk_params

NAMES = ("psanet_resnet50", "psanet_resnet101", "psanet_resnet50_deepstem", "psanet_resnet101_deepstem")


@pytest.fixture(scope="module")
def net() -> psanet.PSANet:
    torch.manual_seed(0)
    return MODELS.build("psanet_resnet50", num_classes=3, mask_size=(15, 15), dropout=0.0)


def reference_buffers(mask: torch.Tensor, m_h: int, m_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The loops of lib/psa/src/cpu/psamask.cpp (collect, distribute), on zero-filled N×(hw)×(hw) buffers."""
    n, _, h, w = mask.shape
    half_h, half_w = (m_h - 1) // 2, (m_w - 1) // 2
    collect, distribute = torch.zeros(n, h * w, h * w), torch.zeros(n, h * w, h * w)
    for y in range(h):
        for x in range(w):
            for hi in range(max(0, half_h - y), min(m_h, h + half_h - y)):
                for wi in range(max(0, half_w - x), min(m_w, w + half_w - x)):
                    other = (hi + y - half_h) * w + (wi + x - half_w)
                    collect[:, other, y * w + x] = mask[:, hi * m_w + wi, y, x]
                    distribute[:, y * w + x, other] = mask[:, hi * m_w + wi, y, x]
    return collect, distribute


@pytest.mark.parametrize("size, mask_size", [((4, 5), (7, 9)), ((6, 4), (5, 5)), ((3, 3), (9, 9))])
def test_psa_mask_matches_the_release_operator(size: tuple[int, int], mask_size: tuple[int, int]) -> None:
    """Covering (2h-1)×(2w-1), a window smaller than the map (zeros) and a window larger than it (cropped)."""
    mask = torch.randn(2, mask_size[0] * mask_size[1], *size)
    collect, distribute = reference_buffers(mask, *mask_size)
    ours = psanet.psa_mask(mask, mask_size)
    torch.testing.assert_close(ours, collect, rtol=0, atol=0)
    torch.testing.assert_close(ours.transpose(1, 2), distribute, rtol=0, atol=0)


def test_branches_attend_over_the_shrunk_map_and_normalise(net: psanet.PSANet) -> None:
    """64×64 input → 8×8 features → 4×4 after the ×2 shrink: 16×16 attention per image, columns summing to 1."""
    with torch.no_grad():
        feats = net.backbone(torch.randn(2, 3, 64, 64))["layer4"]
        collect, distribute = net.psa.branches
        x, a = collect.attention_map(feats)
        _, b = distribute.attention_map(feats)
    assert x.shape == (2, 512, 4, 4) and a.shape == b.shape == (2, 16, 16)
    torch.testing.assert_close(a.sum(1), torch.ones(2, 16))
    torch.testing.assert_close(b.sum(1), torch.ones(2, 16))
    assert not collect.distribute and distribute.distribute
    assert collect.attention[-1].out_channels == 15 * 15


def test_distribute_sends_what_collect_would_gather_transposed() -> None:
    """Same weights in both kinds: distribute's attention is collect's pre-softmax map transposed."""
    torch.manual_seed(0)
    branch = psanet.PSABranch(8, 4, (5, 5), distribute=False).eval()
    feats = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        _, a = branch.attention_map(feats)
        branch.distribute = True
        _, b = branch.attention_map(feats)
        shrunk = F.interpolate(branch.reduce(feats), size=(3, 3), mode="bilinear", align_corners=True)
        raw = psanet.psa_mask(branch.attention(shrunk), (5, 5))
    torch.testing.assert_close(a, torch.softmax(raw, 1))
    torch.testing.assert_close(b, torch.softmax(raw.transpose(1, 2), 1))


def test_psa_concatenates_the_projected_context_with_the_features(net: psanet.PSANet) -> None:
    with torch.no_grad():
        feats = torch.randn(1, 2048, 7, 9)
        out = net.psa.eval()(feats)
    assert out.shape == (1, 4096, 7, 9) and torch.equal(out[:, :2048], feats)
    assert net.psa.project[0].in_channels == 1024 and net.head[0][0].in_channels == 4096


@pytest.mark.parametrize("name", NAMES)
def test_param_count_is_the_derivation(name: str) -> None:
    depth = 101 if "101" in name else 50
    branch = 2048 * 512 + 2 * 512 + 512 * 512 + 2 * 512 + 512 * 59 * 59
    head = 2 * branch + 1024 * 2048 + 2 * 2048 + 9 * 4096 * 512 + 2 * 512 + 9 * 1024 * 256 + 2 * 256
    expected = resnet_trunk_params(depth, name.endswith("deepstem")) + head + (513 + 257) * 150
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=150)
    assert sum(p.numel() for p in model.parameters()) == expected == MODELS.meta(name)["paper_params"]


def test_deep_stem_is_the_release_trunk_at_output_stride_8() -> None:
    """hszhao/semseg model/resnet.py deep_base: 3×3 convs 3→64/2, 64→64, 64→128; layer1 takes 128; layer3/4
    dilated 2/4 in every block (the release's loop over conv2), so a 49×65 input gives 7×9 features."""
    with torch.device("meta"):
        model = MODELS.build("psanet_resnet50_deepstem", num_classes=4)
        feats = model.backbone(torch.empty(1, 3, 49, 65))
    convs = [m for m in model.backbone.stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(3, 64, (2, 2)), (64, 64, (1, 1)),
                                                                          (64, 128, (1, 1))]
    assert model.backbone.layer1[0].conv1.in_channels == 128
    assert feats["layer4"].shape[-2:] == feats["layer3"].shape[-2:] == (7, 9)
    for layer, rate in (("layer3", 2), ("layer4", 4)):
        blocks = getattr(model.backbone, layer)
        assert all(b.conv2.dilation == (rate, rate) and b.conv2.stride == (1, 1) for b in blocks)
    with torch.device("meta"), pytest.raises(ConfigError, match="no deep-stem"):
        MODELS.build("psanet_resnet101_deepstem", num_classes=4, pretrained_backbone=True)


def test_one_direction_has_one_branch_and_the_mask_size_sets_the_attention_width() -> None:
    with torch.device("meta"):
        collect = MODELS.build("psanet_resnet50", num_classes=4, psa_type="collect", mask_size=(89, 89))
    assert len(collect.psa.branches) == 1 and collect.psa.project[0].in_channels == 512
    assert collect.psa.branches[0].attention[-1].out_channels == 89 * 89  # Cityscapes 705×705 crops


@pytest.mark.parametrize("params, key", [({"psa_type": "both"}, "psa_type"), ({"mask_size": [58, 59]}, "mask_size"),
                                         ({"mask_size": [59]}, "mask_size"), ({"dropout": 1.0}, "dropout")])
def test_bad_settings_are_one_line_config_errors(params: dict, key: str) -> None:
    with torch.device("meta"), pytest.raises(ConfigError, match=f"model.params.{key}:"):
        MODELS.build("psanet_resnet50", num_classes=4, **params)


def test_aux_head_in_training_only(net: psanet.PSANet) -> None:
    x = torch.randn(2, 3, 33, 41)
    with torch.no_grad():
        assert set(net.train()(x)) == {"out", "aux"}
        assert set(net.eval()(x)) == {"out"}


def test_a_few_sgd_steps_fit_a_batch(net: psanet.PSANet) -> None:
    """The trunk is frozen and run once; PSA and the head learn."""
    net.train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 2, 2)).repeat_interleave(16, 1).repeat_interleave(16, 2)
    with torch.no_grad():
        feats = net.backbone(x)["layer4"]
    opt = torch.optim.SGD([*net.psa.parameters(), *net.head.parameters()], lr=0.05, momentum=0.9)

    def loss() -> torch.Tensor:
        return F.cross_entropy(F.interpolate(net.head(net.psa(feats)), size=(32, 32), mode="bilinear"), y)

    losses = fit(loss, opt, 5)
    assert losses[-1] < 0.9 * losses[0], losses
