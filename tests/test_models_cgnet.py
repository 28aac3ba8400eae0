"""CGNet tests: the CG block (joint feature, global-context gate, residual), stage channels and strides,
input injection, the official key layout and the pinned count of the authors' M3N21 model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semseg.errors import ConfigError
from semseg.models import cgnet
from semseg.registry import MODELS
from tests.conftest import assert_onnx_matches
from tests.fixtures.training import fit


def cbp(n_in: int, n_out: int, k: int) -> int:
    """Conv (bias-free) + BN + PReLU."""
    return k * k * n_in * n_out + 3 * n_out


def fglo(c: int, r: int) -> int:
    return c * (c // r) + c // r + (c // r) * c + c


def down_block(n_in: int, n_out: int, r: int) -> int:
    """3×3/2 conv + BN + PReLU, two 3×3 channel-wise convs, BN + PReLU on 2C, 1×1 2C → C, f_glo."""
    return cbp(n_in, n_out, 3) + 2 * 9 * n_out + 3 * 2 * n_out + 2 * n_out * n_out + fglo(n_out, r)


def cg_block(c: int, r: int) -> int:
    """1×1 C → C/2 + BN + PReLU, two 3×3 channel-wise convs on C/2, BN + PReLU on C, f_glo."""
    return cbp(c, c // 2, 1) + 2 * 9 * (c // 2) + 3 * c + fglo(c, r)


def derived(num_classes: int, m: int = 3, n: int = 21) -> int:
    stage1 = cbp(3, 32, 3) + 2 * cbp(32, 32, 3) + 3 * 35
    stage2 = down_block(35, 64, 8) + (m - 1) * cg_block(64, 8) + 3 * 131
    stage3 = down_block(131, 128, 16) + (n - 1) * cg_block(128, 16) + 3 * 256
    return stage1 + stage2 + stage3 + 256 * num_classes


@pytest.mark.parametrize("classes, expected", [(19, 496_306), (11, 494_258)])
def test_count_is_the_authors_m3n21(classes: int, expected: int) -> None:
    """496,306 at 19 classes: model/CGNet.py's Context_Guided_Network(19, M=3, N=21), the paper's "0.5M"."""
    model = MODELS.build("cgnet", num_classes=classes)
    assert sum(p.numel() for p in model.parameters()) == derived(classes) == expected
    meta = MODELS.meta("cgnet")
    assert meta["paper_params"] == 0.5e6 and meta["paper_kwargs"] == {"num_classes": 19}
    assert abs(496_306 - meta["paper_params"]) <= 0.01 * meta["paper_params"]


def test_other_depths_count_as_derived() -> None:
    model = MODELS.build("cgnet", num_classes=4, m=2, n=5)
    assert sum(p.numel() for p in model.parameters()) == derived(4, 2, 5)
    assert len(model.level2) == 1 and len(model.level3) == 4  # the first block of a stage is the down block


def test_state_dict_uses_the_official_names_and_shapes() -> None:
    model = MODELS.build("cgnet", num_classes=19)
    state = model.state_dict()
    expected = {
        "level1_0.conv.weight": (32, 3, 3, 3), "level1_2.act.weight": (32,), "b1.bn.running_var": (35,),
        "level2_0.conv1x1.conv.weight": (64, 35, 3, 3), "level2_0.F_loc.conv.weight": (64, 1, 3, 3),
        "level2_0.bn.weight": (128,), "level2_0.act.weight": (128,), "level2_0.reduce.conv.weight": (64, 128, 1, 1),
        "level2_0.F_glo.fc.0.weight": (8, 64), "level2_0.F_glo.fc.2.weight": (64, 8),
        "level2.1.conv1x1.conv.weight": (32, 64, 1, 1), "level2.1.F_sur.conv.weight": (32, 1, 3, 3),
        "bn_prelu_2.act.weight": (131,), "level3_0.conv1x1.conv.weight": (128, 131, 3, 3),
        "level3.19.bn_prelu.bn.weight": (128,), "level3.19.F_glo.fc.0.bias": (8,),
        "bn_prelu_3.bn.weight": (256,), "classifier.0.conv.weight": (19, 256, 1, 1),
    }  # fmt: skip
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))  # bias-free, as theirs


def test_cg_block_is_joint_feature_then_global_gate_then_residual() -> None:
    torch.manual_seed(0)
    block = cgnet.ContextGuidedBlock(16, dilation=2, reduction=8).eval()
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        reduced = block.conv1x1(x)
        loc, sur = block.F_loc(reduced), block.F_sur(reduced)
        joint = block.bn_prelu(torch.cat([loc, sur], 1))
        torch.testing.assert_close(block.joint(x), joint)
        gate = torch.sigmoid(block.F_glo.fc[2](torch.relu(block.F_glo.fc[0](joint.mean(dim=(2, 3))))))
        torch.testing.assert_close(block(x), x + joint * gate[..., None, None])
    assert reduced.shape[1] == loc.shape[1] == sur.shape[1] == 8  # each of f_loc, f_sur gives half the channels
    for conv, rate in ((block.F_loc.conv, 1), (block.F_sur.conv, 2)):
        assert conv.groups == conv.in_channels == 8 and conv.kernel_size == (3, 3)  # channel-wise
        assert conv.dilation == conv.padding == (rate, rate)


def test_global_context_reweights_channels_only() -> None:
    """f_glo multiplies each channel by one number in (0, 1) that depends on the whole map."""
    torch.manual_seed(0)
    glo = cgnet.FGlo(16, 4)
    x = torch.randn(3, 16, 7, 5).abs() + 0.1
    with torch.no_grad():
        out, w = glo(x), glo.weights(x)
    assert w.shape == (3, 16, 1, 1) and ((w > 0) & (w < 1)).all()
    ratio = out / x
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio))  # constant over space
    assert not torch.allclose(w[0], w[1])  # a different image gets a different gate
    assert [type(m) for m in glo.fc] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear, torch.nn.Sigmoid]
    assert glo.fc[0].out_features == 4


def test_down_block_halves_the_size_has_no_residual_and_reduces_2c_to_c() -> None:
    block = cgnet.ContextGuidedBlockDown(35, 64, dilation=2, reduction=8).eval()
    assert block.conv1x1.conv.stride == (2, 2) and block.conv1x1.conv.kernel_size == (3, 3)
    assert block.reduce.conv.in_channels == 128 and block.reduce.conv.kernel_size == (1, 1)
    with torch.no_grad():
        x = torch.randn(1, 35, 23, 31)
        out = block(x)
        joint = block.act(block.bn(torch.cat([block.F_loc(block.conv1x1(x)), block.F_sur(block.conv1x1(x))], 1)))
        torch.testing.assert_close(out, block.F_glo(block.reduce(joint)))
    assert out.shape == (1, 64, 12, 16)


def test_stage_channels_strides_and_injection_at_an_odd_size() -> None:
    torch.manual_seed(0)
    model = MODELS.build("cgnet", num_classes=6).eval()
    x = torch.randn(1, 3, 45, 61)
    seen = {}
    model.b1.register_forward_hook(lambda m, i, o: seen.update(b1=i[0]))
    model.bn_prelu_2.register_forward_hook(lambda m, i, o: seen.update(b2=i[0]))
    with torch.no_grad():
        stage1, stage2, stage3 = model.features(x)
        assert model(x)["out"].shape == (1, 6, 45, 61)
    assert stage1.shape[1:] == (35, 23, 31) and stage2.shape[1:] == (131, 12, 16) and stage3.shape[1:] == (256, 6, 8)
    # input injection: the last 3 channels going into stages 2 and 3 are the image average-pooled to 1/2 and 1/4
    half = F.avg_pool2d(x, 3, 2, 1)
    torch.testing.assert_close(seen["b1"][:, 32:], half)
    torch.testing.assert_close(seen["b2"][:, 128:], F.avg_pool2d(half, 3, 2, 1))
    assert [b.F_sur.conv.dilation for b in model.level2] == [(2, 2)] * 2
    assert [b.F_sur.conv.dilation for b in model.level3] == [(4, 4)] * 20
    assert {b.F_glo.fc[0].out_features for b in model.level3} == {128 // 16}
    assert MODELS.meta("cgnet")["output_stride"] == 8


def test_dropout_is_optional_and_training_only() -> None:
    torch.manual_seed(0)
    model = MODELS.build("cgnet", num_classes=3, m=1, n=1, dropout=0.5)
    assert model.dropout.p == 0.5 and MODELS.build("cgnet", num_classes=3).dropout.p == 0.0
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)["out"], model(x)["out"])
        assert set(model.train()(x)) == {"out"}  # no auxiliary head in training either


def test_zero_blocks_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.params.m"):
        MODELS.build("cgnet", num_classes=4, m=0)
    with pytest.raises(ConfigError, match="model.params.n"):
        MODELS.build("cgnet", num_classes=4, n=0)


def test_a_few_adam_steps_fit_a_batch() -> None:
    torch.manual_seed(0)
    model = MODELS.build("cgnet", num_classes=4, m=2, n=3).train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = fit(lambda: F.cross_entropy(model(x)["out"], y), opt, 10)
    assert losses[-1] < 0.9 * losses[0], losses


def test_onnx_export_matches_pytorch(tmp_path) -> None:
    """The global-context gate (mean → FC → sigmoid), PReLU and the dilated channel-wise convs survive export."""
    torch.manual_seed(0)
    assert_onnx_matches(MODELS.build("cgnet", num_classes=4, m=2, n=3), tmp_path / "cgnet.onnx", (45, 61))

