"""ESPNetv2 tests: released counts and key layout, EESP dilations and HFF, the strided unit with the image
reinforcement, feature strides, the pyramid pooling and gated skip fusion, FLOPs, local ImageNet weights.

The nets are small (≤ 0.79M parameters), so they are built on the CPU (faster here than the meta device);
the 1024×512 FLOP counts run on the meta device, real forwards at ≤ 64 px.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from semseg.errors import ConfigError
from semseg.models import espnet_v2
from semseg.registry import MODELS
from tests.fixtures.training import fit

NAMES = {"espnet_v2": 2.0, "espnet_v2_s1_5": 1.5, "espnet_v2_s1": 1.0, "espnet_v2_s0_5": 0.5}
# Parameters of the released Cityscapes files (sacmehta/EdgeNets model/segmentation/model_zoo/espnetv2/
# espnetv2_s_<s>_city_1024x512.pth, 20 outputs), counted once from the files; their VOC files (21) have 11 more.
RELEASED = {"espnet_v2": 789_242, "espnet_v2_s1_5": 468_362, "espnet_v2_s1": 234_010, "espnet_v2_s0_5": 80_342}


def _build(name: str, num_classes: int = 20) -> espnet_v2.ESPNetV2:
    return MODELS.build(name, num_classes=num_classes)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_counts_are_the_released_files_less_the_three_dead_prelus(name: str) -> None:
    """The official strided EESP creates a PReLU it never calls (one per down-sampler): ours leaves them out."""
    c1, c2, c3, c4 = espnet_v2.CHANNELS[NAMES[name]]
    dead = (c2 - c1) + (c3 - c2) + (c4 - c3)  # the strided EESPs' widths
    assert _count(_build(name)) == RELEASED[name] - dead == MODELS.meta(name)["paper_params"] - dead
    assert _count(_build(name, 21)) - _count(_build(name)) == 11  # the last 1×1 (10 → C) and its bias
    assert MODELS.meta(name)["output_stride"] == 16 and MODELS.meta(name)["paper_kwargs"] == {"num_classes": 20}


def test_state_dict_uses_the_edgenets_names_and_shapes() -> None:
    """Keys of espnetv2_s_2.0_city_1024x512.pth (their ``base_net.`` is our ``backbone.``): 526 there, less the 3
    dead PReLUs; a few with their shapes."""
    state = _build("espnet_v2").state_dict()
    assert len(state) == 523 and not any(k.endswith("eesp.module_act.weight") for k in state)
    expected = {
        "backbone.level1.conv.weight": (32, 3, 3, 3), "backbone.level1.act.weight": (32,),
        "backbone.level2_0.eesp.proj_1x1.conv.weight": (24, 8, 1, 1),
        "backbone.level2_0.eesp.spp_dw.3.conv.weight": (24, 1, 3, 3),
        "backbone.level2_0.eesp.conv_1x1_exp.conv.weight": (96, 24, 1, 1),
        "backbone.level2_0.eesp.br_after_cat.act.weight": (96,),
        "backbone.level2_0.inp_reinf.0.conv.weight": (3, 3, 3, 3), "backbone.level2_0.inp_reinf.1.bn.bias": (128,),
        "backbone.level2_0.act.weight": (128,), "backbone.level3.2.module_act.weight": (256,),
        "backbone.level4_0.inp_reinf.1.conv.weight": (512, 3, 1, 1), "backbone.level4.6.proj_1x1.conv.weight": (128, 128, 1, 1),
        "bu_dec_l1.projection_layer.cbr.0.weight": (10, 512, 1, 1), "bu_dec_l1.stages.4.weight": (10, 1, 3, 3),
        "bu_dec_l1.merge_layer.0.br.1.weight": (50,), "bu_dec_l1.merge_layer.2.cbr.0.weight": (10, 5, 3, 3),
        "bu_dec_l1.merge_layer.3.weight": (64, 10, 1, 1), "bu_dec_l1.br.br.0.running_var": (64,),
        "bu_dec_l4.merge_layer.3.weight": (20, 10, 1, 1), "bu_dec_l4.merge_layer.3.bias": (20,),
        "merge_enc_dec_l2.wt_layer.1.weight": (64, 256, 1, 1), "merge_enc_dec_l2.expansion_layer.cbr.0.weight": (64, 4, 3, 3),
        "merge_enc_dec_l3.expansion_layer.cbr.0.weight": (48, 8, 3, 3),
        "merge_enc_dec_l4.expansion_layer.cbr.0.weight": (32, 1, 3, 3), "bu_br_l4.1.weight": (32,),
    }  # fmt: skip
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert "bu_dec_l4.br.br.0.weight" not in state and "bu_dec_l1.merge_layer.3.bias" not in state


def test_eesp_dilations_follow_the_receptive_field_limits() -> None:
    """Effective sizes 3, 5, 7, 9 (d 1-4) up to the level's limit; larger ones fall back to 3×3, sorted first."""
    dilations = [espnet_v2.kernel_dilations(4, r) for r in (13, 11, 9, 7, 5)]
    assert dilations == [[1, 2, 3, 4]] * 3 + [[1, 1, 2, 3], [1, 1, 1, 2]]
    net = _build("espnet_v2").backbone
    def rates(unit: espnet_v2.EESP) -> list[int]:
        return [b.conv.dilation[0] for b in unit.spp_dw]

    assert rates(net.level2_0.eesp) == rates(net.level3_0.eesp) == rates(net.level4_0.eesp) == [1, 2, 3, 4]
    assert all(rates(u) == [1, 2, 3, 4] for u in net.level3) and all(rates(u) == [1, 1, 2, 3] for u in net.level4)
    assert (len(net.level3), len(net.level4)) == espnet_v2.REPEATS == (3, 7)
    depthwise = [b.conv for b in net.level4[0].spp_dw]
    assert all(conv.padding == conv.dilation and conv.groups == conv.in_channels for conv in depthwise)
    assert net.level4[0].proj_1x1.conv.groups == net.level4[0].conv_1x1_exp.conv.groups == espnet_v2.BRANCHES


def test_eesp_is_group_reduce_depthwise_split_hff_group_merge_residual() -> None:
    torch.manual_seed(0)
    unit = espnet_v2.EESP(16, 16, r_lim=7).eval()
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        r = unit.proj_1x1(x)
        d = [b(r) for b in unit.spp_dw]
        hff = torch.cat([d[0], d[0] + d[1], d[0] + d[1] + d[2], d[0] + d[1] + d[2] + d[3]], 1)
        torch.testing.assert_close(unit(x), unit.module_act(unit.conv_1x1_exp(unit.br_after_cat(hff)) + x))
    assert r.shape[1] == 4 and unit.proj_1x1.conv.groups == 4


def test_strided_unit_concats_the_pool_and_adds_the_reinforced_image() -> None:
    torch.manual_seed(0)
    down = espnet_v2.DownSampler(16, 32, r_lim=13).eval()
    assert not hasattr(down.eesp, "module_act")  # returns its expanded maps unactivated
    x, image = torch.randn(1, 16, 23, 31), torch.randn(1, 3, 12, 16)
    with torch.no_grad():
        eesp = down.eesp(x)
        r = down.eesp.proj_1x1(x)
        d = [b(r) for b in down.eesp.spp_dw]
        hff = torch.cat([d[0], d[0] + d[1], d[0] + d[1] + d[2], d[0] + d[1] + d[2] + d[3]], 1)
        torch.testing.assert_close(eesp, down.eesp.conv_1x1_exp(down.eesp.br_after_cat(hff)))  # no residual, no act
        assert eesp.shape == (1, 16, 12, 16) and all(b.conv.stride == (2, 2) for b in down.eesp.spp_dw)
        manual = down.act(torch.cat([F.avg_pool2d(x, 3, 2, 1), eesp], 1) + down.inp_reinf(image))
        torch.testing.assert_close(down(x, image), manual)


def test_feature_strides_and_channels_at_an_odd_size() -> None:
    """Each stride-2 layer gives ⌈n/2⌉, and the image pooled k times lands on level k's size exactly."""
    for name, scale in NAMES.items():
        with torch.no_grad():
            feats = _build(name).backbone.eval()(torch.randn(1, 3, 45, 61))
        sizes = {k: tuple(v.shape[1:]) for k, v in feats.items()}
        c = espnet_v2.CHANNELS[scale]
        assert sizes == {"level1": (c[0], 23, 31), "level2": (c[1], 12, 16),
                     "level3": (c[2], 6, 8), "level4": (c[3], 3, 4)}


def test_decoder_widths_and_resolutions() -> None:
    model = _build("espnet_v2", 7).train()
    seen = {}
    for part in ("bu_dec_l1", "bu_dec_l2", "bu_dec_l3", "bu_dec_l4"):
        getattr(model, part).register_forward_hook(lambda m, i, o, part=part: seen.update({part: tuple(o.shape[1:])}))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 45, 61))
    assert set(out) == {"out"} and out["out"].shape == (2, 7, 45, 61)  # no auxiliary head, in training either
    assert seen == {"bu_dec_l1": (64, 3, 4), "bu_dec_l2": (48, 6, 8),
                    "bu_dec_l3": (32, 12, 16), "bu_dec_l4": (7, 23, 31)}
    assert model.bu_dec_l1.projection_layer.cbr[0].out_channels == 3  # min(C // 2, 16) = 3 at 7 classes
    assert _build("espnet_v2", 40).bu_dec_l4.projection_layer.cbr[0].out_channels == 16


def test_pyramid_pooling_branch_sizes_and_shuffle() -> None:
    sizes = [espnet_v2.pyramid_size(6, 8, s) for s in espnet_v2.PYRAMID_SCALES]
    assert sizes == [(12, 16), (9, 12), (6, 8), (5, 5), (5, 5)]
    assert espnet_v2.pyramid_size(64, 128, 0.1) == (7, 13)
    torch.manual_seed(0)
    epp = espnet_v2.EfficientPyrPool(12, 4, 8).eval()
    assert isinstance(epp.merge_layer[1], torch.nn.ChannelShuffle) and epp.merge_layer[1].groups == 5
    x = torch.randn(1, 12, 6, 8)
    with torch.no_grad():
        p = epp.projection_layer(x)
        def bilinear(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            return F.interpolate(t, size, mode="bilinear", align_corners=True)

        up = F.adaptive_avg_pool2d(epp.stages[0](bilinear(p, (12, 16))), (6, 8))
        small = bilinear(epp.stages[3](F.adaptive_avg_pool2d(p, (5, 5))), (6, 8))
        branches = torch.cat([up, torch.zeros_like(p), epp.stages[2](p), small, torch.zeros_like(p)], 1)
        seen = []
        hook = epp.merge_layer[0].register_forward_hook(lambda m, i, o: seen.append(i[0]))
        assert epp(x).shape == (1, 8, 6, 8)
        hook.remove()
    for k in (0, 2, 3):  # the 2×, 1× and ½× branches, in the scales' order before the shuffle
        torch.testing.assert_close(seen[0][:, 4 * k:4 * k + 4], branches[:, 4 * k:4 * k + 4])
    assert espnet_v2.EfficientPyrPool(12, 4, 3, last=True).merge_layer[3].bias is not None


def test_skip_fusion_is_a_group_conv_gated_by_a_global_sigmoid() -> None:
    torch.manual_seed(0)
    fuse = espnet_v2.EfficientPWConv(12, 8).eval()
    assert fuse.expansion_layer.cbr[0].groups == 4  # gcd(12, 8)
    x = torch.randn(2, 12, 5, 7)
    with torch.no_grad():
        gate = torch.sigmoid(F.conv2d(x.mean((2, 3), keepdim=True), fuse.wt_layer[1].weight))
        torch.testing.assert_close(fuse(x), fuse.expansion_layer(x) * gate)


def test_resize_to_the_skip_is_the_official_doubling_at_even_sizes() -> None:
    x = torch.randn(1, 3, 5, 7)
    official = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    torch.testing.assert_close(F.interpolate(x, size=(10, 14), mode="bilinear", align_corners=True), official)


@pytest.mark.parametrize("name", NAMES)
def test_flops_are_the_model_zoo_table(name: str) -> None:
    """Multiply-adds at 1024×512 against the authors' table (theirs also counts BN/activations: within 0.3 %)."""
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=20).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, 3, 512, 1024))
    paper, size = MODELS.meta(name)["paper_gflops"]
    assert size == (512, 1024) and abs(counter.get_total_flops() / 2e9 - paper) <= 0.003 * paper


def test_pretrained_backbone_is_a_local_edgenets_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="torchvision has no ImageNet ESPNetv2") as err:
        MODELS.build("espnet_v2_s0_5", num_classes=4, pretrained_backbone=True)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        MODELS.build("espnet_v2_s0_5", num_classes=4, pretrained_backbone=str(tmp_path / "none.pth"))
    torch.manual_seed(1)
    source = espnet_v2.EESPNetFeatures(0.5).state_dict()
    # as the authors' files come: a DataParallel/base_net prefix, the dead PReLUs, heads, no BN step counters
    state = {f"module.base_net.{k}": v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    state["module.base_net.level2_0.eesp.module_act.weight"] = torch.full((16,), 0.25)
    state["module.bu_dec_l1.merge_layer.3.weight"] = torch.zeros(64, 10, 1, 1)
    torch.save(state, tmp_path / "imagenet.pth")
    model = MODELS.build("espnet_v2_s0_5", num_classes=4, pretrained_backbone=str(tmp_path / "imagenet.pth"))
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.items() if not k.endswith("num_batches_tracked"))
    del state["module.base_net.level4.6.proj_1x1.conv.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(ConfigError, match="do not fit the backbone"):
        MODELS.build("espnet_v2_s0_5", num_classes=4, pretrained_backbone=str(tmp_path / "short.pth"))


def test_one_class_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.params.num_classes"):
        MODELS.build("espnet_v2_s0_5", num_classes=1)


def test_a_few_adam_steps_fit_a_batch() -> None:
    torch.manual_seed(0)
    model = MODELS.build("espnet_v2_s0_5", num_classes=3).train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = fit(lambda: F.cross_entropy(model(x)["out"], y), opt, 15)
    assert losses[-1] < 0.9 * losses[0], losses

