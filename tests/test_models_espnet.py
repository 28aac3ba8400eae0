"""ESPNet tests: the ESP module's hierarchical fusion, the official key layout and counts, strides, any size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semseg.errors import ConfigError
from semseg.models import espnet
from semseg.registry import MODELS
from tests.fixtures.training import fit

# Parameter counts of the released p = 2, q = 8 state dicts (sacmehta/ESPNet pretrained/), counted once from the files.
RELEASED = {("espnet", 20, False): 364_569, ("espnet_c", 20, False): 349_449, ("espnet", 12, True): 354_517}


@pytest.mark.parametrize("name, classes, fuse_image", list(RELEASED))
def test_counts_are_the_released_models(name: str, classes: int, fuse_image: bool) -> None:
    kwargs = {"fuse_image": fuse_image} if name == "espnet" else {}
    model = MODELS.build(name, num_classes=classes, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == RELEASED[name, classes, fuse_image]
    if not fuse_image:
        assert MODELS.meta(name)["paper_params"] == RELEASED[name, classes, fuse_image]


def test_state_dict_uses_the_official_names_and_shapes() -> None:
    """A few keys of pretrained/decoder/espnet_p_2_q_8.pth (Cityscapes) with their shapes: they load by name."""
    state = MODELS.build("espnet", num_classes=20).state_dict()
    expected = {
        "encoder.level1.conv.weight": (16, 3, 3, 3), "encoder.b1.act.weight": (19,),
        "encoder.level2_0.c1.conv.weight": (12, 19, 3, 3), "encoder.level2_0.d1.conv.weight": (16, 12, 3, 3),
        "encoder.level2_0.act.weight": (64,), "encoder.level2.1.bn.bn.running_var": (64,),
        "encoder.level3.7.d16.conv.weight": (25, 25, 3, 3), "encoder.classifier.conv.weight": (20, 256, 1, 1),
        "level3_C.conv.weight": (20, 131, 1, 1), "br.running_mean": (20,), "conv.conv.weight": (20, 36, 3, 3),
        "up_l3.0.weight": (20, 20, 2, 2), "combine_l2_l3.0.bn.weight": (40,),
        "combine_l2_l3.1.c1.conv.weight": (4, 40, 1, 1),
        "up_l2.1.act.weight": (20,), "classifier.weight": (20, 20, 2, 2),
    }  # fmt: skip
    assert {k: tuple(state[k].shape) for k in expected} == expected
    camvid = MODELS.build("espnet", num_classes=12, fuse_image=True).state_dict()
    assert tuple(camvid["conv.conv.weight"].shape) == (12, 31, 3, 3)  # pretrained/decoder/espnet_p_2_q_8_camvid.pth


def test_esp_module_is_reduce_split_hierarchical_fusion_merge() -> None:
    block = espnet.ESP(10, 10).eval()
    x = torch.randn(2, 10, 9, 11)
    with torch.no_grad():
        r = block.c1(x)
        d = {rate: getattr(block, f"d{rate}")(r) for rate in espnet.RATES}
        merged = torch.cat([d[1], d[2], d[2] + d[4], d[2] + d[4] + d[8], d[2] + d[4] + d[8] + d[16]], 1)
        torch.testing.assert_close(block(x), block.bn(merged + x))
    assert block.c1.conv.out_channels == 2 and block.d1.conv.out_channels == 2  # 10 // 5, remainder to d1
    assert [getattr(block, f"d{r}").conv.dilation[0] for r in espnet.RATES] == [1, 2, 4, 8, 16]
    odd = espnet.ESP(13, 13)
    assert odd.d1.conv.out_channels == 13 - 4 * 2  # the first branch takes the remainder
    down = espnet.ESP(19, 64, stride=2)
    assert down.c1.conv.stride == (2, 2) and down.c1.conv.kernel_size == (3, 3) and not down.add


def test_strides_and_channels_at_an_odd_size() -> None:
    model = MODELS.build("espnet", num_classes=6).eval()
    with torch.no_grad():
        level1, level1_cat, out1, out2 = model.encoder.features(torch.randn(1, 3, 45, 61))
        assert model(torch.randn(1, 3, 45, 61))["out"].shape == (1, 6, 45, 61)
    assert (level1.shape[1:], level1_cat.shape[1:]) == ((16, 23, 31), (19, 23, 31))
    assert out1.shape[1:] == (131, 12, 16) and out2.shape[1:] == (256, 6, 8)  # ⌈/4⌉, ⌈/8⌉
    assert MODELS.meta("espnet")["output_stride"] == MODELS.meta("espnet_c")["output_stride"] == 8


def test_espnet_c_upsampling_alignment_is_a_parameter() -> None:
    """Half-pixel by default (unchanged); align_corners=True is the release's PyTorch 0.3 nn.Upsample(×8)."""
    torch.manual_seed(0)
    model = MODELS.build("espnet_c", num_classes=5).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        scores = model.classifier(model.features(x)[-1])
        default = model(x)["out"]
        model.align_corners = True
        aligned = model(x)["out"]
    torch.testing.assert_close(default, F.interpolate(scores, size=(40, 56), mode="bilinear", align_corners=False))
    torch.testing.assert_close(aligned, F.interpolate(scores, scale_factor=8, mode="bilinear", align_corners=True))
    assert MODELS.build("espnet_c", num_classes=5, align_corners=True).align_corners is True


def test_too_few_classes_or_modules_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.params.num_classes"):
        MODELS.build("espnet", num_classes=4)  # the decoder's ESP module needs C >= 5
    with pytest.raises(ConfigError, match="model.params.q"):
        MODELS.build("espnet_c", num_classes=4, q=0)


@pytest.mark.parametrize("name", ["espnet_c", "espnet"])
def test_a_few_adam_steps_fit_a_batch(name: str) -> None:
    model = MODELS.build(name, num_classes=5).train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = fit(lambda: F.cross_entropy(model(x)["out"], y), opt, 10)
    assert losses[-1] < 0.9 * losses[0], losses
