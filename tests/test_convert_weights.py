"""Official checkpoints → our models, offline: synthetic files with the official key names and shapes.

The layouts come from tests/fixtures/official_layouts.py (written from the official code).
Each converted file must load with nothing missing or left over; the tensors must be the
official ones (spot-checked by name, folds checked numerically); where a fold or a wiring
could be wrong, the logits are compared with a reference forward written from the official
code's ``forward`` (ERFNet, Light-Weight RefineNet) or one layer of it (FCN's BGR input).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semseg.build import restore
from semseg.errors import CheckpointError
from semseg.models._blocks import bilinear_kernel
from semseg.official import OFFICIAL, convert_state, unwrap
from semseg.registry import MODELS
from tests.fixtures import official_layouts as L

R50 = (3, 4, 6, 3)


def _convert(layout: str, model: str, official: dict[str, torch.Tensor], num_classes: int, **params: object):
    conv = OFFICIAL.get(layout)()
    net = MODELS.build(model, num_classes=num_classes, **{**conv.model_params, **params})
    state = convert_state(conv, unwrap({"state_dict": {f"module.{k}": v for k, v in official.items()}}),
                          net.state_dict())
    missing, unexpected = net.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    return net.eval(), conv


def test_every_layout_names_registered_models() -> None:
    for name in OFFICIAL.names():
        models = OFFICIAL.meta(name)["models"]
        assert models and all(m in MODELS for m in models), name
        assert tuple(OFFICIAL.get(name)().models) == tuple(models)


def test_pspnet_hszhao() -> None:
    official = L.fill(L.hszhao_pspnet(R50, 150))
    net, _ = _convert("hszhao_pspnet", "pspnet50_deepstem", official, 150)
    ours = net.state_dict()
    pairs = [("layer0.6.weight", "backbone.stem.6.weight"), ("layer0.7.running_var", "backbone.stem.7.running_var"),
             ("layer3.5.conv2.weight", "backbone.layer3.5.conv2.weight"),
             ("ppm.features.3.1.weight", "ppm.stages.3.1.0.weight"), ("ppm.features.2.2.bias", "ppm.stages.2.1.1.bias"),
             ("cls.0.weight", "head.0.0.weight"), ("cls.4.bias", "head.2.bias"), ("aux.4.weight", "aux.2.weight")]
    for theirs, mine in pairs:
        assert torch.equal(ours[mine], official[theirs]), theirs
    assert net.align_corners is True


def _official_lw_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """light-weight-refinenet models/resnet.py ResNetLW.forward (eval: dropout off), on the official tensors."""
    from torchvision.models import resnet50

    trunk = resnet50()
    decoder = ("p_", "adapt", "mflow", "clf")
    trunk.load_state_dict({k: v for k, v in sd.items() if not k.startswith(decoder)}, strict=False)
    trunk.eval()
    h = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
    l1 = trunk.layer1(h)
    l2 = trunk.layer2(l1)
    l3 = trunk.layer3(l2)
    l4 = trunk.layer4(l3)

    def c(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, sd[f"{name}.weight"], sd.get(f"{name}.bias"), padding=sd[f"{name}.weight"].shape[-1] // 2)

    def crp(g: int, t: torch.Tensor) -> torch.Tensor:
        top = t
        for i in range(1, 5):
            top = c(f"mflow_conv_g{g}_pool.0.{i}_outvar_dimred", F.max_pool2d(top, 5, 1, 2))
            t = top + t
        return t

    def up(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=like.shape[2:], mode="bilinear", align_corners=True)

    x4 = crp(1, F.relu(c("p_ims1d2_outl1_dimred", l4)))
    x4 = up(c("mflow_conv_g1_b3_joint_varout_dimred", x4), l3)
    x3 = crp(2, F.relu(c("adapt_stage2_b2_joint_varout_dimred", c("p_ims1d2_outl2_dimred", l3)) + x4))
    x3 = up(c("mflow_conv_g2_b3_joint_varout_dimred", x3), l2)
    x2 = crp(3, F.relu(c("adapt_stage3_b2_joint_varout_dimred", c("p_ims1d2_outl3_dimred", l2)) + x3))
    x2 = up(c("mflow_conv_g3_b3_joint_varout_dimred", x2), l1)
    x1 = crp(4, F.relu(c("adapt_stage4_b2_joint_varout_dimred", c("p_ims1d2_outl4_dimred", l1)) + x2))
    return c("clf_conv", x1)


def test_lw_refinenet_drsleep_gives_the_official_logits() -> None:
    official = L.fill(L.drsleep_refinenet(R50, 21, light=True), seed=1)
    net, _ = _convert("drsleep_lw_refinenet", "refinenet_lw50", official, 21)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = net(x)["out"]
        theirs = _official_lw_forward(official, x)  # at 1/4; their train.py resizes with align_corners=False
        theirs = F.interpolate(theirs, size=x.shape[2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


def test_refinenet_drsleep_maps_every_tensor() -> None:
    """Full RefineNet (99M parameters): shapes on the meta device, names spot-checked."""
    layout = L.drsleep_refinenet(R50, 21, light=False)
    conv = OFFICIAL.get("drsleep_refinenet")()
    with torch.device("meta"):
        net = MODELS.build("refinenet50", num_classes=21)
        official = {k: torch.empty(s) for k, s in layout.items()}
    official["adapt_stage3_b.0.2_conv.bias"] = torch.arange(256.0)  # a real tensor to follow
    state = convert_state(conv, official, net.state_dict())
    assert set(state) == set(net.state_dict())
    assert torch.equal(state["blocks.2.adapt.2.conv1.bias"], torch.arange(256.0))
    assert state["blocks.1.fuse.1.weight"].shape == layout["mflow_conv_g1_b3_joint_varout_dimred.weight"]
    assert state["blocks.3.output.2.conv2.weight"].shape == layout["mflow_conv_g4_b.0.3_conv_relu_varout_dimred.weight"]


def _official_erfnet_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """erfnet_pytorch train/erfnet.py Net.forward in eval mode, on the official (biased) tensors."""

    def bn(p: str, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                            False, 0.0, 1e-3)

    def down(p: str, t: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.conv2d(t, sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], 2, 1), F.max_pool2d(t, 2, 2)], 1)
        return F.relu(bn(f"{p}.bn", y))

    def nb(p: str, t: torch.Tensor, d: int) -> torch.Tensor:
        y = F.relu(F.conv2d(t, sd[f"{p}.conv3x1_1.weight"], sd[f"{p}.conv3x1_1.bias"], padding=(1, 0)))
        y = F.relu(bn(f"{p}.bn1", F.conv2d(y, sd[f"{p}.conv1x3_1.weight"], sd[f"{p}.conv1x3_1.bias"], padding=(0, 1))))
        y = F.relu(F.conv2d(y, sd[f"{p}.conv3x1_2.weight"], sd[f"{p}.conv3x1_2.bias"], padding=(d, 0), dilation=(d, 1)))
        y = F.conv2d(y, sd[f"{p}.conv1x3_2.weight"], sd[f"{p}.conv1x3_2.bias"], padding=(0, d), dilation=(1, d))
        y = bn(f"{p}.bn2", y)
        return F.relu(y + t)

    def upb(p: str, t: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose2d(t, sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], 2, 1, output_padding=1)
        return F.relu(bn(f"{p}.bn", y))

    t = down("encoder.layers.0", down("encoder.initial_block", x))
    for i in range(1, 6):
        t = nb(f"encoder.layers.{i}", t, 1)
    t = down("encoder.layers.6", t)
    for i, d in zip(range(7, 15), (2, 4, 8, 16) * 2):
        t = nb(f"encoder.layers.{i}", t, d)
    t = upb("decoder.layers.0", t)
    t = nb("decoder.layers.2", nb("decoder.layers.1", t, 1), 1)
    t = upb("decoder.layers.3", t)
    t = nb("decoder.layers.5", nb("decoder.layers.4", t, 1), 1)
    return F.conv_transpose2d(t, sd["decoder.output_conv.weight"], sd["decoder.output_conv.bias"], 2)


def test_erfnet_eromera_folds_biases_and_gives_the_official_logits() -> None:
    """20 official outputs (19 + void): our 19 are the first 19 of theirs, with every pre-BN bias folded."""
    official = L.fill(L.eromera_erfnet(20), seed=2)
    net, conv = _convert("eromera_erfnet", "erfnet", official, 19)
    x = torch.rand(2, 3, 64, 96)  # ToTensor() range; even sizes, which the official floor pooling needs
    with torch.no_grad():
        theirs = _official_erfnet_forward(official, x)[:, :19]
        ours = net(x)["out"]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())
    assert conv.augment == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    mean = net.state_dict()["stage1.0.bn1.running_mean"]
    expected = official["encoder.layers.1.bn1.running_mean"] - official["encoder.layers.1.conv1x3_1.bias"]
    torch.testing.assert_close(mean, expected)


def test_fcdensenet_tiramisu_port() -> None:
    """The port's FCDenseNet57 is our fcdensenet56; 12 outputs (void last) → CamVid's 11; PyTorch BN eps."""
    official = L.fill(L.bfortuner_tiramisu((4,) * 5, 4, (4,) * 5, 12, 12), seed=3)
    net, conv = _convert("bfortuner_tiramisu", "fcdensenet56", official, 11)
    ours = net.state_dict()
    assert torch.equal(ours["classifier.weight"], official["finalConv.weight"][:11])
    assert torch.equal(ours["down_blocks.2.layers.3.2.weight"], official["denseBlocksDown.2.layers.3.conv.weight"])
    assert torch.equal(ours["transitions_down.4.0.0.running_var"], official["transDownBlocks.4.norm.running_var"])
    assert torch.equal(ours["bottleneck.layers.1.0.bias"], official["bottleneck.bottleneck.layers.1.norm.bias"])
    assert torch.equal(ours["transitions_up.0.up.weight"], official["transUpBlocks.0.convTrans.weight"])
    assert {m.eps for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}
    assert conv.model_params == {"bn_eps": 1e-5}
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64))["out"].shape == (1, 11, 64, 64)


def test_drn_fyu_segmentation_checkpoint() -> None:
    layout = L.fyu_drn_d22_seg(19)
    official = L.fill(layout, seed=4)
    official["up.weight"] = bilinear_kernel(1, 1, 16).expand(19, 1, 16, 16).clone()
    net, _ = _convert("fyu_drn_d", "drn_d_22", official, 19)
    ours = net.state_dict()
    assert torch.equal(ours["base.layer0.0.weight"], official["base.0.0.weight"])
    assert torch.equal(ours["base.layer5.0.downsample.1.running_mean"], official["base.5.0.downsample.1.running_mean"])
    assert torch.equal(ours["base.layer8.1.weight"], official["base.8.1.weight"])
    assert torch.equal(ours["seg.bias"], official["seg.bias"])
    official["up.weight"] = official["up.weight"] * 2  # a learned (or wrong) upsampler cannot be dropped silently
    with pytest.raises(CheckpointError, match="up.weight: not the fixed bilinear upsampler"):
        _convert("fyu_drn_d", "drn_d_22", official, 19)


@pytest.mark.parametrize(("model", "skips"), [("fcn32s", ()), ("fcn16s", ("pool4",)), ("fcn8s", ("pool4", "pool3"))])
def test_fcn_wkentaro_maps_every_tensor(model: str, skips: tuple[str, ...]) -> None:
    layout = L.wkentaro_fcn(21, skips)
    conv = OFFICIAL.get("wkentaro_fcn")()
    final = next(k for k in layout if k.startswith("upscore") and k not in ("upscore2.weight", "upscore_pool4.weight"))
    with torch.device("meta"):
        net = MODELS.build(model, num_classes=21)
        official = {k: torch.empty(s) for k, s in layout.items() if k != final}
    official[final] = bilinear_kernel(21, 21, layout[final][-1])  # the fixed caffe upsampler: checked, dropped
    official["score_fr.bias"] = torch.arange(21.0)  # real tensors to follow through the rename
    if skips:
        official["upscore2.weight"] = torch.randn(21, 21, 4, 4)
    state = convert_state(conv, official, net.state_dict())
    assert set(state) == set(net.state_dict())
    assert torch.equal(state["score_fr.bias"], torch.arange(21.0))
    if skips:
        assert torch.equal(state["skip_ups.pool4.weight"], official["upscore2.weight"])


def test_fcn_bgr_caffe_input_becomes_our_rgb_input() -> None:
    """conv1_1 on a BGR 0–255 image minus the caffe mean = our conv on RGB 0–1 normalised as the config says."""
    conv = OFFICIAL.get("wkentaro_fcn")()
    w, b = torch.randn(64, 3, 3, 3), torch.randn(64)
    state = {"backbone.features.0.weight": w.clone()}
    conv.fix(state)
    rgb = torch.rand(1, 3, 8, 8)
    bgr255 = rgb.flip(1) * 255 - torch.tensor([104.00698793, 116.66876762, 122.67891434]).view(1, 3, 1, 1)
    mean, std = torch.tensor(conv.augment["mean"]).view(1, 3, 1, 1), torch.tensor(conv.augment["std"]).view(1, 3, 1, 1)
    theirs = F.conv2d(bgr255, w, b)
    ours = F.conv2d((rgb - mean) / std, state["backbone.features.0.weight"], b)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)


def test_unknown_and_missing_keys_are_one_line_errors() -> None:
    official = L.fill(L.eromera_erfnet(20))
    net = MODELS.build("erfnet", num_classes=19)
    conv = OFFICIAL.get("eromera_erfnet")()
    with pytest.raises(CheckpointError, match=r"keys this layout does not know: extra\.weight"):
        convert_state(conv, {**official, "extra.weight": torch.zeros(1)}, net.state_dict(), "erf.pth")
    del official["decoder.output_conv.bias"]
    with pytest.raises(CheckpointError, match=r"erf.pth: converted weights do not fit the model \(missing"):
        convert_state(conv, official, net.state_dict(), "erf.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        unwrap({"epoch": 3}, "erf.pth")


def test_cli_writes_a_checkpoint_validate_restores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Command one of the two (convert); restore() is what validate.py runs first."""
    from tools import convert_weights

    official = L.fill(L.eromera_erfnet(20), seed=5)
    src, out = tmp_path / "erfnet_pretrained.pth", tmp_path / "erfnet_cityscapes.pt"
    torch.save({f"module.{k}": v for k, v in official.items()}, src)
    rc = convert_weights.main([str(src), str(out), "--layout", "eromera_erfnet", "--model", "erfnet",
                               "--dataset", "cityscapes", "--root", "/data/cityscapes"])
    assert rc == 0 and out.is_file()
    model, cfg, ckpt = restore(str(out), [])
    assert cfg.model.name == "erfnet" and cfg.data.name == "cityscapes" and len(ckpt["classes"]) == 19
    assert tuple(cfg.augment.mean) == (0.0, 0.0, 0.0) and tuple(cfg.augment.std) == (1.0, 1.0, 1.0)
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)["out"], _official_erfnet_forward(official, x)[:, :19],
                                   rtol=1e-4, atol=1e-3)
    assert convert_weights.main([str(src), str(out), "--layout", "eromera_erfnet", "--model", "enet",
                                 "--dataset", "cityscapes"]) != 0
    assert "layout 'eromera_erfnet' fits erfnet" in capsys.readouterr().err
