"""GCN tests: the k×1/1×k kernels (no BN/ReLU inside), the BR residual, bilinear-initialised deconvs,
the res-2..res-5 strides, the Fig. 2 wiring and the derived parameter count.

Full-size nets are built on the meta device; real forwards use ResNet-50 at ≤ 48 px.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semseg.models._backbones as backbones
from semseg.errors import ConfigError
from semseg.models import gcn
from semseg.models._blocks import bilinear_kernel
from semseg.registry import MODELS
from tests.conftest import assert_onnx_matches
from tests.fixtures.training import fit
from tests.test_models_pspnet import resnet_trunk_params

NAMES = ("gcn_resnet50", "gcn_resnet101")


def decoder_params(c: int, k: int) -> int:
    """Fig. 2 at C classes: per stage a GCN (k×1 + 1×k on each branch, biased), 9 BR (two biased 3×3), 5 deconvs."""
    gcn_modules = sum(2 * (k * c_in * c + c) + 2 * (k * c * c + c) for c_in in (256, 512, 1024, 2048))
    return gcn_modules + 9 * (2 * (9 * c * c + c)) + 5 * (4 * 4 * c * c)


@pytest.fixture(scope="module")
def small() -> gcn.GCN:
    torch.manual_seed(0)
    return MODELS.build("gcn_resnet50", num_classes=3).eval()


@pytest.mark.parametrize("name", NAMES)
def test_param_count_is_the_derivation(name: str) -> None:
    depth = 101 if "101" in name else 50
    expected = resnet_trunk_params(depth, False) + decoder_params(21, 15)
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=21)
    assert sum(p.numel() for p in model.parameters()) == expected == MODELS.meta(name)["paper_params"]
    assert expected == {50: 26_087_588, 101: 45_079_716}[depth]  # pinned: 2,579,556 in the decoder
    with torch.device("meta"):
        city = MODELS.build(name, num_classes=19, k=25)  # the paper's Cityscapes setting (§4.3)
    assert sum(p.numel() for p in city.parameters()) == resnet_trunk_params(depth, False) + decoder_params(19, 25)


def test_gcn_module_is_two_separable_branches_without_bn_or_relu() -> None:
    torch.manual_seed(0)
    module = gcn.GlobalConv(8, 5, k=7)
    assert [m.kernel_size for m in module.left] == [(7, 1), (1, 7)]
    assert [m.kernel_size for m in module.right] == [(1, 7), (7, 1)]
    assert [m.padding for m in module.left] == [(3, 0), (0, 3)]
    assert [m.padding for m in module.right] == [(0, 3), (3, 0)]
    assert {type(m) for m in module.modules()} == {gcn.GlobalConv, nn.Sequential, nn.Conv2d}  # nothing else inside
    x = torch.randn(2, 8, 9, 13)
    with torch.no_grad():
        left = F.conv2d(F.conv2d(x, module.left[0].weight, module.left[0].bias, padding=(3, 0)),
                        module.left[1].weight, module.left[1].bias, padding=(0, 3))
        right = F.conv2d(F.conv2d(x, module.right[0].weight, module.right[0].bias, padding=(0, 3)),
                         module.right[1].weight, module.right[1].bias, padding=(3, 0))
        out = module(x)
    assert out.shape == (2, 5, 9, 13)
    torch.testing.assert_close(out, left + right)
    # linear, as the paper's module: doubling the input doubles the bias-free response
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.zeros_(conv.bias)
    with torch.no_grad():
        torch.testing.assert_close(module(2 * x), 2 * module(x))


def test_the_registered_kernel_is_15_and_must_be_odd() -> None:
    with torch.device("meta"):
        model = MODELS.build("gcn_resnet50", num_classes=4)
    assert {m.left[0].kernel_size for m in model.gcn} == {(15, 1)} and len(model.gcn) == 4
    assert [m.left[0].in_channels for m in model.gcn] == [256, 512, 1024, 2048]
    with pytest.raises(ConfigError, match="model.params.k"):
        MODELS.build("gcn_resnet50", num_classes=4, k=14)


def test_boundary_refinement_is_a_residual_block() -> None:
    torch.manual_seed(0)
    br = gcn.BoundaryRefinement(4)
    x = torch.randn(1, 4, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(br(x), x + br.conv2(torch.relu(br.conv1(x))))
        nn.init.zeros_(br.conv2.weight)
        nn.init.zeros_(br.conv2.bias)
        torch.testing.assert_close(br(x), x)  # the residual branch off: the identity
    assert br.conv1.kernel_size == br.conv2.kernel_size == (3, 3)


def test_deconvolutions_start_as_bilinear_upsampling() -> None:
    up = gcn.deconv2x(3)
    assert up.kernel_size == (4, 4) and up.stride == (2, 2) and up.bias is None and up.weight.requires_grad
    torch.testing.assert_close(up.weight, bilinear_kernel(3, 3, 4))
    with torch.no_grad():
        out = up(torch.ones(1, 3, 5, 6))
    assert out.shape == (1, 3, 10, 12)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], torch.ones(1, 3, 8, 10))  # constant inside the border


def test_backbone_stages_are_at_strides_4_to_32() -> None:
    with torch.device("meta"):
        model = MODELS.build("gcn_resnet101", num_classes=4).eval()
        x = torch.empty(1, 3, 45, 61)
        feats = model.backbone(x)
        maps = model.scores(x)
    # ⌈45/s⌉ × ⌈61/s⌉ for s = 4, 8, 16, 32
    assert [tuple(feats[n].shape[-2:]) for n in gcn.LEVELS] == [(12, 16), (6, 8), (3, 4), (2, 2)]
    assert [tuple(m.shape[1:]) for m in maps] == [(4, 12, 16), (4, 6, 8), (4, 3, 4), (4, 2, 2)]
    assert MODELS.meta("gcn_resnet101")["output_stride"] == 32


def test_decoder_fuses_coarse_to_fine_as_fig_2(small: gcn.GCN) -> None:
    """Each BR after a sum sees deconv(coarser) + the finer stage's GCN + BR map, at the finer size."""
    x = torch.randn(1, 3, 45, 61)
    seen: dict[str, tuple[torch.Tensor, ...]] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, key=f"fuse{j}": seen.update({key: (i[0], o)}))
             for j, m in enumerate(small.br_fuse)]
    hooks += [m.register_forward_hook(lambda mod, i, o, key=f"up{j}": seen.update({key: (i[0], o)}))
              for j, m in enumerate(small.br_up)]
    with torch.no_grad():
        maps = small.scores(x)
        out = small(x)["out"]
    for h in hooks:
        h.remove()
    assert out.shape == (1, 3, 45, 61)
    assert [tuple(seen[f"fuse{j}"][0].shape[-2:]) for j in range(3)] == [(12, 16), (6, 8), (3, 4)]
    assert tuple(seen["up0"][0].shape[-2:]) == (23, 31) and tuple(seen["up1"][0].shape[-2:]) == (45, 61)
    with torch.no_grad():  # the 1/16 sum, rebuilt from the 1/32 and 1/16 stage maps
        expected = small.deconv[0](maps[3])[..., :3, :4] + maps[2]
    torch.testing.assert_close(seen["fuse2"][0], expected)
    torch.testing.assert_close(out, seen["up1"][1])  # the last BR's output is the prediction, no extra classifier


def test_torchvision_weights_fit_the_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet101

    with torch.device("meta"):
        state = resnet101(weights=None).state_dict()
        monkeypatch.setattr(backbones, "_download", lambda weights: state)
        MODELS.build("gcn_resnet101", num_classes=4, pretrained_backbone=True)  # raises on any mismatch


def test_a_few_adam_steps_fit_a_batch() -> None:
    torch.manual_seed(0)
    model = MODELS.build("gcn_resnet50", num_classes=3, k=3).train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = fit(lambda: F.cross_entropy(model(x)["out"], y), opt, 8)
    assert losses[-1] < 0.9 * losses[0], losses


def test_dynamic_onnx_export_matches_pytorch(small: gcn.GCN, tmp_path) -> None:
    """The cropped deconvolutions follow a symbolic input size (export checks sizes other than the traced one)."""
    assert_onnx_matches(small, tmp_path / "gcn.onnx", (64, 64), dynamic=True, multiple=32)

