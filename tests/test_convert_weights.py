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


# --- Second-wave families (issue 17): DenseASPP, ESPNet-C, the DeepLab v3+ port ------------------------------------


def _convert_meta(layout: str, model: str, official: dict[str, torch.Tensor], num_classes: int):
    """As ``_convert``, for the large trunks: built on the meta device (no random init), the converted tensors
    assigned in place by a strict load."""
    conv = OFFICIAL.get(layout)()
    with torch.device("meta"):
        net = MODELS.build(model, num_classes=num_classes, **conv.model_params)
    state = convert_state(conv, unwrap({"state_dict": {f"module.{k}": v for k, v in official.items()}}),
                          net.state_dict())
    missing, unexpected = net.load_state_dict(state, strict=True, assign=True)
    assert not missing and not unexpected
    assert not any(t.is_meta for t in [*net.parameters(), *net.buffers()])
    return net.eval(), conv


def _bn(sd: dict[str, torch.Tensor], p: str, t: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, eps)


def _conv(sd: dict[str, torch.Tensor], p: str, t: torch.Tensor, dilation: int = 1, stride: int = 1) -> torch.Tensor:
    w = sd[f"{p}.weight"]
    return F.conv2d(t, w, sd.get(f"{p}.bias"), stride, dilation * (w.shape[-1] // 2), dilation)


def _official_denseaspp_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int) -> torch.Tensor:
    """DenseASPP models/DenseASPP.py DenseASPP.forward (output_stride 8, eval), on the official tensors."""
    blocks = L.DENSEASPP_CFGS[depth][2]
    t = F.max_pool2d(F.relu(_bn(sd, "features.norm0", _conv(sd, "features.conv0", x, stride=2))), 3, 2, 1)
    for b, n in enumerate(blocks, start=1):
        rate = {3: 2, 4: 4}.get(b, 1)  # dilation_rate int(2 / feature_size), int(4 / feature_size)
        for i in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            y = _conv(sd, f"{p}.conv.1", F.relu(_bn(sd, f"{p}.norm.1", t)))
            t = torch.cat([t, _conv(sd, f"{p}.conv.2", F.relu(_bn(sd, f"{p}.norm.2", y)), rate)], 1)
        t = _conv(sd, f"features.transition{b}.conv", F.relu(_bn(sd, f"features.transition{b}.norm", t)))
        if b == 1:  # only transition 1 keeps its pool at output stride 8
            t = F.avg_pool2d(t, 2, 2)
    feature = F.relu(_bn(sd, "features.norm5", t))  # ASPP_3 starts with an in-place ReLU on the shared features
    for i, rate in enumerate((3, 6, 12, 18, 24)):
        p = f"ASPP_{rate}"
        y = feature if i == 0 else F.relu(_bn(sd, f"{p}.norm.1", feature))
        y = _conv(sd, f"{p}.conv.2", F.relu(_bn(sd, f"{p}.norm.2", _conv(sd, f"{p}.conv.1", y))), rate)
        feature = torch.cat([y, feature], 1)
    return F.interpolate(_conv(sd, "classification.1", feature), scale_factor=8, mode="bilinear", align_corners=True)


def test_denseaspp_deepmotion_gives_the_official_logits() -> None:
    """DenseASPP121 layout (the released 161 has the same names): a rename, PyTorch 0.3 file without BN counters."""
    official = L.fill(L.deepmotion_denseaspp(121, 19), seed=6)
    assert not any(k.endswith("num_batches_tracked") for k in official)
    net, conv = _convert_meta("deepmotion_denseaspp", "denseaspp_densenet121", official, 19)
    ours = net.state_dict()
    pairs = [("features.denseblock3.denselayer7.norm.2.running_var",
              "backbone.features.denseblock3.denselayer7.norm2.running_var"),
             ("features.transition4.conv.weight", "backbone.features.transition4.2.weight"),
             ("ASPP_3.conv.2.bias", "aspp.layers.0.3.bias"), ("ASPP_18.norm.1.weight", "aspp.layers.3.0.weight"),
             ("classification.1.weight", "classifier.weight")]
    for theirs, mine in pairs:
        assert torch.equal(ours[mine], official[theirs]), theirs
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        theirs = _official_denseaspp_forward(official, x, 121)
        mine = net(x)["out"]
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())
    assert conv.augment["mean"] == [0.290101, 0.328081, 0.286964] and net.align_corners is True


def test_denseaspp161_release_maps_every_tensor() -> None:
    """The released DenseASPP161 (142.7 MB): every tensor placed, shapes on the meta device."""
    layout = L.deepmotion_denseaspp(161, 19)
    with torch.device("meta"):
        net = MODELS.build("denseaspp_densenet161", num_classes=19)
        official = {k: torch.empty(s) for k, s in layout.items()}
    official["ASPP_24.conv.2.bias"] = torch.arange(128.0)
    state = convert_state(OFFICIAL.get("deepmotion_denseaspp")(), official, net.state_dict())
    assert set(state) == set(net.state_dict())
    assert torch.equal(state["aspp.layers.4.5.bias"], torch.arange(128.0))
    assert state["backbone.features.norm5.weight"].shape == (1104,)  # 2208 halved by transition 4
    assert state["classifier.weight"].shape == (19, 1104 + 5 * 128, 1, 1)


def _official_espnet_features(sd: dict[str, torch.Tensor], x: torch.Tensor, p: int = 2, q: int = 8
                              ) -> tuple[torch.Tensor, ...]:
    """ESPNet train/Model.py ESPNet_Encoder.forward (eval) up to the classifier, on the official tensors and their BGR
    input: level 1 (1/2, 16), level 1 + image (19), the 1/4 concat (131), the 1/8 concat (256)."""

    def br(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.prelu(_bn(sd, f"{name}.bn", t, 1e-3), sd[f"{name}.act.weight"])

    def esp(name: str, t: torch.Tensor, down: bool) -> torch.Tensor:
        reduced = _conv(sd, f"{name}.c1.conv", t, stride=2 if down else 1)
        d = [_conv(sd, f"{name}.d{r}.conv", reduced, r) for r in (1, 2, 4, 8, 16)]
        fused = torch.cat([d[0], d[1], d[1] + d[2], d[1] + d[2] + d[3], d[1] + d[2] + d[3] + d[4]], 1)
        return br(name, fused) if down else br(f"{name}.bn", fused + t)

    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, 3, 2, 1)

    out0 = br("level1", _conv(sd, "level1.conv", x, stride=2))
    out0_cat = br("b1", torch.cat([out0, pool(x)], 1))
    out1_0 = out1 = esp("level2_0", out0_cat, True)
    for i in range(p):
        out1 = esp(f"level2.{i}", out1, False)
    out1 = br("b2", torch.cat([out1, out1_0, pool(pool(x))], 1))
    out2_0 = out2 = esp("level3_0", out1, True)
    for i in range(q):
        out2 = esp(f"level3.{i}", out2, False)
    return out0, out0_cat, out1, br("b3", torch.cat([out2_0, out2], 1))


def _official_espnet_c_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, p: int = 2, q: int = 8) -> torch.Tensor:
    """ESPNet_Encoder.forward: the 1/8 scores."""
    return _conv(sd, "classifier.conv", _official_espnet_features(sd, x, p, q)[-1])


def _official_espnet_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, fuse_image: bool, q: int = 8
                             ) -> torch.Tensor:
    """ESPNet.forward: train/Model.py (``fuse_image``: the last conv reads output0_cat) or test/Model.py (output0)."""
    enc = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    out0, out0_cat, out1_cat, out2_cat = _official_espnet_features(enc, x, q=q)

    def br(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.prelu(_bn(sd, f"{name}.bn", t, 1e-3), sd[f"{name}.act.weight"])

    def esp_b(name: str, t: torch.Tensor) -> torch.Tensor:  # DilatedParllelResidualBlockB(add=False)
        reduced = _conv(sd, f"{name}.c1.conv", t)
        d = [_conv(sd, f"{name}.d{r}.conv", reduced, r) for r in (1, 2, 4, 8, 16)]
        return br(f"{name}.bn", torch.cat([d[0], d[1], d[1] + d[2], d[1] + d[2] + d[3], d[1] + d[2] + d[3] + d[4]], 1))

    def up(key: str, t: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(t, sd[key], stride=2)

    out2_c = up("up_l3.0.weight", _bn(sd, "br", _conv(enc, "classifier.conv", out2_cat), 1e-3))
    out1_c = _conv(sd, "level3_C.conv", out1_cat)
    comb = br("up_l2.1", up("up_l2.0.weight", esp_b("combine_l2_l3.1", br("combine_l2_l3.0",
                                                                          torch.cat([out1_c, out2_c], 1)))))
    concat = torch.cat([comb, out0_cat if fuse_image else out0], 1)
    return up("classifier.weight", br("conv", _conv(sd, "conv.conv", concat)))


def _espnet_input(rgb: torch.Tensor) -> torch.Tensor:
    """Their pipeline: cv2 BGR 0–255, minus mean, over std, then ToTensor's div(255)."""
    from semseg.official.espnet import MEAN_BGR, STD_BGR

    mean, std = torch.tensor(MEAN_BGR).view(1, 3, 1, 1), torch.tensor(STD_BGR).view(1, 3, 1, 1)
    return (rgb.flip(1) * 255 - mean) / std / 255


def test_espnet_c_sacmehta_cli_gives_the_official_logits(tmp_path: Path) -> None:
    """Convert (void dropped, BGR → RGB inside the net, their normalisation in the config), restore, compare 1/8."""
    from tools import convert_weights

    official = L.fill(L.sacmehta_espnet_c(20), seed=7)
    src, out = tmp_path / "espnet_p_2_q_8.pth", tmp_path / "espnet_c_cityscapes.pt"
    torch.save(official, src)  # a plain state dict, as released
    assert convert_weights.main([str(src), str(out), "--layout", "sacmehta_espnet_c", "--model", "espnet_c",
                                 "--dataset", "cityscapes", "--root", "/data/cityscapes"]) == 0
    model, cfg, ckpt = restore(str(out), [])
    assert len(ckpt["classes"]) == 19 and tuple(cfg.augment.std) == (44.91483307, 46.15289307, 45.3192215)
    rgb = torch.rand(2, 3, 48, 80)
    ours_in = (rgb - torch.tensor(cfg.augment.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.augment.std).view(1, 3, 1, 1)
    net = model.eval()
    with torch.no_grad():
        theirs = _official_espnet_c_forward(official, _espnet_input(rgb))[:, :19]
        ours = net.classifier(net.features(ours_in)[-1])
        wrong = _official_espnet_c_forward(official, _espnet_input(rgb.flip(1)))[:, :19]  # RGB fed as if BGR
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())
    assert not torch.allclose(ours, wrong, atol=1e-2)  # the channel reversal matters
    # test/VisualizeResults.py: nn.Upsample(scale_factor=8, mode='bilinear') of PyTorch 0.3, i.e. align_corners=True
    assert cfg.model.params["align_corners"] is True and net.align_corners is True
    with torch.no_grad():
        up = F.interpolate(theirs, scale_factor=8, mode="bilinear", align_corners=True)
        torch.testing.assert_close(net(ours_in)["out"], up, rtol=1e-4, atol=1e-4 * up.abs().max().item())
        half_pixel = F.interpolate(theirs, scale_factor=8, mode="bilinear", align_corners=False)
    assert (net(ours_in)["out"] - half_pixel).abs().max() > 1e-3  # the setting matters


def test_espnet_c_other_depths_and_the_decoder_file() -> None:
    """q = 3 loads with model.params.q = 3; the full ESPNet's file is not this layout (one line)."""
    official = L.fill(L.sacmehta_espnet_c(20, q=3), seed=8)
    net, _ = _convert("sacmehta_espnet_c", "espnet_c", official, 19, q=3)
    assert len(net.level3) == 3
    decoder = {f"encoder.{k}": v for k, v in official.items()}
    own = MODELS.build("espnet_c", num_classes=19).state_dict()
    with pytest.raises(CheckpointError, match=r"keys this layout does not know: encoder\.level1"):
        convert_state(OFFICIAL.get("sacmehta_espnet_c")(), decoder, own)


@pytest.mark.parametrize(("layout", "classes", "fuse_image"),
                         [("sacmehta_espnet", 20, False), ("sacmehta_espnet_camvid", 12, True)])
def test_full_espnet_sacmehta_cli_gives_the_official_logits(tmp_path: Path, layout: str, classes: int,
                                                             fuse_image: bool) -> None:
    """The decoder files: one output wider (void) inside, dropped at the end; the image's BGR channels reversed in
    the encoder, in level3_C and (CamVid) in the last conv; their normalisation in the config."""
    from tools import convert_weights

    official = L.fill(L.sacmehta_espnet(classes, fuse_image), seed=9)
    src, out = tmp_path / "espnet_p_2_q_8.pth", tmp_path / "espnet.pt"
    torch.save(official, src)
    dataset = "camvid" if classes == 12 else "cityscapes"
    assert convert_weights.main([str(src), str(out), "--layout", layout, "--model", "espnet",
                                 "--dataset", dataset]) == 0
    model, cfg, ckpt = restore(str(out), [])
    assert cfg.model.params["extra_outputs"] == 1 and len(ckpt["classes"]) == classes - 1
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg.augment.mean, cfg.augment.std))
    rgb = torch.rand(1, 3, 48, 64)
    their_in = (rgb.flip(1) * 255 - mean.flip(1) * 255) / std.flip(1) / 255  # cv2 BGR, (x − mean) / std / 255
    with torch.no_grad():
        ours = model.eval()((rgb - mean) / std)["out"]
        theirs = _official_espnet_forward(official, their_in, fuse_image)
        wrong = _official_espnet_forward(official, their_in.flip(1), fuse_image)
    assert ours.shape == (1, classes - 1, 48, 64) and theirs.shape[1] == classes
    torch.testing.assert_close(ours, theirs[:, : classes - 1], rtol=1e-4, atol=1e-4 * theirs.abs().max().item())
    assert not torch.allclose(ours, wrong[:, : classes - 1], atol=1e-2)  # the channel reversal matters


def test_full_espnet_file_of_the_other_decoder_names_its_layout() -> None:
    official = L.fill(L.sacmehta_espnet(20, fuse_image=False), seed=2)
    own = MODELS.build("espnet", num_classes=19, extra_outputs=1, fuse_image=True).state_dict()
    with pytest.raises(CheckpointError, match="fuses 16 level-1 channels, not 19; try --layout sacmehta_espnet$"):
        convert_state(OFFICIAL.get("sacmehta_espnet_camvid")(), official, own)


def test_espnet_extra_outputs_widen_the_decoder_and_leave_the_output() -> None:
    plain, wide = MODELS.build("espnet", num_classes=11), MODELS.build("espnet", num_classes=11, extra_outputs=1)
    assert wide.classifier.weight.shape == (12, 12, 2, 2) and plain.classifier.weight.shape == (11, 11, 2, 2)
    with torch.no_grad():
        assert wide.eval()(torch.rand(1, 3, 32, 48))["out"].shape == (1, 11, 32, 48)


def _official_deeplab_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """pytorch-deeplab-xception DeepLab(backbone='resnet', output_stride=16).forward in eval mode."""

    def block(p: str, t: torch.Tensor, stride: int, rate: int) -> torch.Tensor:  # backbone/resnet.py Bottleneck
        y = F.relu(_bn(sd, f"{p}.bn1", _conv(sd, f"{p}.conv1", t)))
        y = F.relu(_bn(sd, f"{p}.bn2", _conv(sd, f"{p}.conv2", y, rate, stride)))
        y = _bn(sd, f"{p}.bn3", _conv(sd, f"{p}.conv3", y))
        short = _bn(sd, f"{p}.downsample.1", _conv(sd, f"{p}.downsample.0", t, stride=stride)) if stride > 1 or \
            f"{p}.downsample.0.weight" in sd else t
        return F.relu(y + short)

    t = F.max_pool2d(F.relu(_bn(sd, "backbone.bn1", _conv(sd, "backbone.conv1", x, stride=2))), 3, 2, 1)
    feats = []
    # strides [1, 2, 2, 1], dilations [1, 1, 1, 2]; layer4 = _make_MG_unit with blocks [1, 2, 4] × 2
    for layer, (n, stride, rates) in enumerate(((3, 1, (1,) * 3), (4, 2, (1,) * 4), (23, 2, (1,) * 23),
                                                (3, 1, (2, 4, 8))), start=1):
        for b in range(n):
            t = block(f"backbone.layer{layer}.{b}", t, stride if b == 0 else 1, rates[b])
        feats.append(t)
    low, high = feats[0], feats[-1]

    def cbr(conv: str, bn: str, t: torch.Tensor, rate: int = 1) -> torch.Tensor:
        return F.relu(_bn(sd, bn, _conv(sd, conv, t, rate)))

    def up(t: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(t, size=size, mode="bilinear", align_corners=True)

    branches = [cbr(f"aspp.aspp{i}.atrous_conv", f"aspp.aspp{i}.bn", high, rate)
                for i, rate in zip(range(1, 5), (1, 6, 12, 18))]
    pooled = cbr("aspp.global_avg_pool.1", "aspp.global_avg_pool.2", F.adaptive_avg_pool2d(high, 1))
    aspp = cbr("aspp.conv1", "aspp.bn1", torch.cat(branches + [up(pooled, high.shape[2:])], 1))
    low = cbr("decoder.conv1", "decoder.bn1", low)
    y = cbr("decoder.last_conv.0", "decoder.last_conv.1", torch.cat([up(aspp, low.shape[2:]), low], 1))
    y = _conv(sd, "decoder.last_conv.8", cbr("decoder.last_conv.4", "decoder.last_conv.5", y))
    return up(y, x.shape[2:])


def test_deeplabv3plus_jfzhang95_gives_the_official_logits() -> None:
    """ResNet-101 VOC layout of the port; output stride 16 in eval mode as its release ("train/eval os 16/16")."""
    official = L.fill(L.jfzhang95_deeplab_resnet(21), seed=9)
    net, conv = _convert_meta("jfzhang95_deeplabv3plus", "deeplabv3plus_resnet101", official, 21)
    assert net.backbone.output_stride == 16 and conv.model_params["eval_output_stride"] is None
    ours = net.state_dict()
    assert torch.equal(ours["backbone.stem.0.weight"], official["backbone.conv1.weight"])
    assert torch.equal(ours["aspp.branches.3.1.running_mean"], official["aspp.aspp4.bn.running_mean"])
    assert torch.equal(ours["aspp.pool.1.0.weight"], official["aspp.global_avg_pool.1.weight"])
    assert torch.equal(ours["decoder.1.1.weight"], official["decoder.last_conv.5.weight"])
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        theirs = _official_deeplab_forward(official, x)
        mine = net(x)["out"]
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


def test_a_training_checkpoint_with_numpy_scalars_is_read(tmp_path: Path) -> None:
    """The port's trainer stores best_pred as a numpy float64 next to the state dict (a numpy 1.x pickle names it
    numpy.core.multiarray.scalar); weights_only loading allows those scalars and nothing else."""
    import io

    import numpy as np

    from tools.convert_weights import read_official

    buf = io.BytesIO()
    torch.save({"epoch": 50, "state_dict": {"module.w": torch.ones(2)}, "best_pred": np.float64(0.7843)}, buf,
               _use_new_zipfile_serialization=False, pickle_protocol=2)
    old = buf.getvalue().replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    (tmp_path / "deeplab-resnet.pth.tar").write_bytes(old)
    assert read_official(str(tmp_path / "deeplab-resnet.pth.tar")).keys() == {"w"}
    torch.save({"state_dict": {"w": torch.ones(2)}, "f": torch.nn.Identity()}, tmp_path / "module.pth")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_official(str(tmp_path / "module.pth"))


# --- Deep-stem releases (issue 15/17): hszhao/semseg PSANet, CSAILVision UPerNet (two files) -----------------------


def _official_trunk(sd: dict[str, torch.Tensor], x: torch.Tensor, blocks: tuple[int, ...], stem: tuple[str, ...],
                    rates: tuple[int, ...]) -> list[torch.Tensor]:
    """The deep-stem ResNet forward of both releases (3×3 convs, BN, ReLU ×3, max pool, Bottlenecks with the stride
    on conv2), eval BN; ``stem`` names its (conv, bn) pairs, ``rates`` the dilation of layer1–4 (1 = strided)."""
    for i, (conv, bn) in enumerate(zip(stem[::2], stem[1::2])):
        x = F.relu(_bn(sd, bn, _conv(sd, conv, x, stride=2 if i == 0 else 1)))
    x = F.max_pool2d(x, 3, 2, 1)
    feats = []
    for layer, (n, rate) in enumerate(zip(blocks, rates), start=1):
        stride = 2 if layer > 1 and rate == 1 else 1
        for b in range(n):
            p, s = f"layer{layer}.{b}", stride if b == 0 else 1
            y = F.relu(_bn(sd, f"{p}.bn1", _conv(sd, f"{p}.conv1", x)))
            y = F.relu(_bn(sd, f"{p}.bn2", _conv(sd, f"{p}.conv2", y, rate, s)))
            y = _bn(sd, f"{p}.bn3", _conv(sd, f"{p}.conv3", y))
            short = _bn(sd, f"{p}.downsample.1", _conv(sd, f"{p}.downsample.0", x, stride=s)) if b == 0 else x
            x = F.relu(y + short)
        feats.append(x)
    return feats


def _official_psanet_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, mask: int) -> torch.Tensor:
    """hszhao/semseg model/psanet.py PSANet.forward (eval, psa_type 2, shrink 2, softmax, normalisation 1) on the
    official tensors; psa_mask is the loops of lib/psa/src/cpu/psamask.cpp (tests/test_models_psanet.py)."""
    from tests.test_models_psanet import reference_buffers

    stem = ("layer0.0", "layer0.1", "layer0.3", "layer0.4", "layer0.6", "layer0.7")
    feats = _official_trunk(sd, x, R50, stem, (1, 1, 2, 4))
    f = feats[-1]
    aggregated = []
    for suffix, kind in (("", 0), ("_p", 1)):
        t = F.relu(_bn(sd, f"psa.reduce{suffix}.1", _conv(sd, f"psa.reduce{suffix}.0", f)))
        n, c, h, w = t.shape
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=True)
        y = F.relu(_bn(sd, f"psa.attention{suffix}.1", _conv(sd, f"psa.attention{suffix}.0", t)))
        y = _conv(sd, f"psa.attention{suffix}.3", y)
        y = F.softmax(reference_buffers(y, mask, mask)[kind], dim=1)
        aggregated.append(torch.bmm(t.reshape(n, c, h * w), y).reshape(n, c, h, w))
    p = F.relu(_bn(sd, "psa.proj.1", _conv(sd, "psa.proj.0", torch.cat(aggregated, 1))))
    p = F.interpolate(p, size=((h - 1) * 2 + 1, (w - 1) * 2 + 1), mode="bilinear", align_corners=True)
    y = F.relu(_bn(sd, "cls.1", _conv(sd, "cls.0", torch.cat([f, p], 1))))
    size = ((x.shape[2] - 1) // 8 * 8 + 1, (x.shape[3] - 1) // 8 * 8 + 1)
    return F.interpolate(_conv(sd, "cls.4", y), size=size, mode="bilinear", align_corners=True)


def test_psanet_hszhao_gives_the_official_logits() -> None:
    """ADE20K ResNet-50 layout (59×59 map of the 465 crops); 49×65 = 16k+1, the sizes the release runs."""
    official = L.fill(L.hszhao_psanet(R50, 150, 59), seed=10)
    net, conv = _convert_meta("hszhao_psanet", "psanet_resnet50_deepstem", official, 150)
    assert conv.model_params == {"align_corners": True, "mask_size": [59, 59]}
    ours = net.state_dict()
    pairs = [("layer0.3.weight", "backbone.stem.3.weight"),
             ("layer1.0.downsample.0.weight", "backbone.layer1.0.downsample.0.weight"),
             ("psa.reduce_p.1.running_var", "psa.branches.1.reduce.1.running_var"),
             ("psa.attention.3.weight", "psa.branches.0.attention.1.weight"),
             ("psa.attention_p.1.bias", "psa.branches.1.attention.0.1.bias"),
             ("psa.proj.0.weight", "psa.project.0.weight"),
             ("cls.4.bias", "head.2.bias"), ("aux.1.running_mean", "aux.0.1.running_mean")]
    for theirs, mine in pairs:
        assert torch.equal(ours[mine], official[theirs]), theirs
    x = torch.randn(1, 3, 49, 65)
    with torch.no_grad():
        theirs = _official_psanet_forward(official, x, 59)
        mine = net(x)["out"]
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


def test_psanet_cityscapes_layout_and_the_wrong_mask_is_named() -> None:
    """The 705-crop Cityscapes files have an 89×89 map: their own layout; each layout names the other on a mismatch."""
    layout = L.hszhao_psanet((3, 4, 23, 3), 19, 89)
    with torch.device("meta"):
        official = {k: torch.empty(s) for k, s in layout.items()}
        conv = OFFICIAL.get("hszhao_psanet_cityscapes")()
        net = MODELS.build("psanet_resnet101_deepstem", num_classes=19, **conv.model_params)
    state = convert_state(conv, official, net.state_dict())
    assert set(state) == set(net.state_dict())
    assert state["psa.branches.1.attention.1.weight"].shape == (89 * 89, 512, 1, 1)
    with pytest.raises(CheckpointError, match=r"89×89 attention map .* try --layout hszhao_psanet_cityscapes"):
        convert_state(OFFICIAL.get("hszhao_psanet")(), official, net.state_dict())
    small = {k: torch.empty(s, device="meta") for k, s in L.hszhao_psanet(R50, 150, 59).items()}
    with pytest.raises(CheckpointError, match=r"59×59 attention map .* try --layout hszhao_psanet$"):
        convert_state(conv, small, net.state_dict())


def _official_upernet_forward(enc: dict[str, torch.Tensor], dec: dict[str, torch.Tensor], x: torch.Tensor,
                              blocks: tuple[int, ...] = R50) -> torch.Tensor:
    """mit_semseg models.py Resnet.forward(return_feature_maps=True) → UPerNet.forward(segSize, use_softmax=True)."""
    conv_out = _official_trunk(enc, x, blocks, ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"), (1, 1, 1, 1))

    def cbr(p: str, t: torch.Tensor) -> torch.Tensor:  # (conv, BN, ReLU) Sequentials: <p>.0, <p>.1
        return F.relu(_bn(dec, f"{p}.1", _conv(dec, f"{p}.0", t)))

    def up(t: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

    conv5 = conv_out[-1]
    ppm = [conv5] + [cbr(f"ppm_conv.{i}", up(F.adaptive_avg_pool2d(conv5, s), conv5.shape[2:]))
                     for i, s in enumerate((1, 2, 3, 6))]
    f = cbr("ppm_last_conv", torch.cat(ppm, 1))
    fpn = [f]
    for i in reversed(range(3)):
        lateral = cbr(f"fpn_in.{i}", conv_out[i])
        f = lateral + up(f, lateral.shape[2:])
        fpn.append(cbr(f"fpn_out.{i}.0", f))
    fpn.reverse()
    fused = torch.cat([fpn[0]] + [up(t, fpn[0].shape[2:]) for t in fpn[1:]], 1)
    logits = _conv(dec, "conv_last.1", cbr("conv_last.0", fused))
    return F.softmax(up(logits, x.shape[2:]), dim=1)


def test_upernet_csail_two_files_cli_gives_the_official_output(tmp_path: Path) -> None:
    """encoder=FILE decoder=FILE → one checkpoint → restore(): the release's softmax output. A 64-wide decoder (set
    with --set model.params.fpn_dim=64) keeps the file small; the release's 512 is the next test."""
    from tools import convert_weights

    enc_layout, dec_layout = L.csail_upernet(R50, 150, fpn_dim=64)
    enc, dec = L.fill(enc_layout, seed=11), L.fill(dec_layout, seed=12)
    torch.save(enc, tmp_path / "encoder_epoch_30.pth")  # plain state dicts, as train.py's checkpoint() saves them
    torch.save(dec, tmp_path / "decoder_epoch_30.pth")
    out = tmp_path / "upernet50_ade20k.pt"
    files = [f"decoder={tmp_path / 'decoder_epoch_30.pth'}", f"encoder={tmp_path / 'encoder_epoch_30.pth'}"]
    assert convert_weights.main([*files, str(out), "--layout", "csail_upernet", "--model",
                                 "upernet_resnet50_deepstem", "--dataset", "ade20k", "--set",
                                 "model.params.fpn_dim=64"]) == 0
    model, cfg, ckpt = restore(str(out), [])
    assert cfg.model.params["fpn_dim"] == 64 and cfg.model.params["align_corners"] is False
    assert ckpt["converted_from"]["file"] == {"encoder": files[1][8:], "decoder": files[0][8:]}
    ours = model.state_dict()
    assert torch.equal(ours["backbone.stem.6.weight"], enc["conv3.weight"])
    assert torch.equal(ours["fpn.smooth.2.1.running_var"], dec["fpn_out.2.0.1.running_var"])
    assert torch.equal(ours["classifier.bias"], dec["conv_last.1.bias"])
    x = torch.rand(1, 3, 64, 96)
    mean, std = torch.tensor(cfg.augment.mean).view(1, 3, 1, 1), torch.tensor(cfg.augment.std).view(1, 3, 1, 1)
    x = (x - mean) / std  # dataset.py: ImageNet mean/std on RGB 0–1, our default
    with torch.no_grad():
        theirs = _official_upernet_forward(enc, dec, x)
        mine = model.eval()(x)["out"].softmax(1)
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_upernet_csail_release_maps_every_tensor() -> None:
    """The released 512-wide decoder and the ResNet-101 encoder: every tensor placed (meta device)."""
    enc_layout, dec_layout = L.csail_upernet((3, 4, 23, 3), 150)
    conv = OFFICIAL.get("csail_upernet")()
    assert OFFICIAL.meta("csail_upernet")["parts"] == ("encoder", "decoder") and conv.model_params["fpn_dim"] == 512
    with torch.device("meta"):
        net = MODELS.build("upernet_resnet101_deepstem", num_classes=150, **conv.model_params)
        official = {**{f"encoder.{k}": torch.empty(s) for k, s in enc_layout.items()},
                    **{f"decoder.{k}": torch.empty(s) for k, s in dec_layout.items()}}
    official["decoder.conv_last.1.bias"] = torch.arange(150.0)
    state = convert_state(conv, official, net.state_dict())
    assert set(state) == set(net.state_dict()) and torch.equal(state["classifier.bias"], torch.arange(150.0))
    released = sum(torch.Size(s).numel() for k, s in dec_layout.items() if not k.endswith("running_mean")
                   and not k.endswith("running_var") and not k.endswith("num_batches_tracked"))
    assert released == 40_590_486  # the decoder_epoch_*.pth parameters (doc/upernet.md)
    with pytest.raises(CheckpointError, match=r"keys this layout does not know: conv1\.weight"):
        convert_state(conv, {k: v for k, v in official.items()} | {"conv1.weight": torch.empty(1)}, net.state_dict())


def test_multi_file_sources_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every part exactly once, as PART=FILE; a single-file layout takes one plain file."""
    from tools import convert_weights

    base = ["--layout", "csail_upernet", "--model", "upernet_resnet50_deepstem", "--dataset", "ade20k"]
    cases = [(["encoder=a.pth", "out.pt"], "no decoder= file"),
             (["encoder=a.pth", "decoder=b.pth", "encoder=c.pth", "out.pt"], "encoder= given twice"),
             (["encoder=a.pth", "head=b.pth", "out.pt"], "head=b.pth: layout 'csail_upernet' reads encoder=FILE"),
             (["a.pth", "out.pt"], "a.pth: layout 'csail_upernet' reads encoder=FILE decoder=FILE")]
    for paths, message in cases:
        assert convert_weights.main([*paths, *base]) != 0
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert convert_weights.main(["a.pth", "b.pth", "out.pt", "--layout", "eromera_erfnet", "--model", "erfnet",
                                 "--dataset", "cityscapes"]) != 0
    assert "layout 'eromera_erfnet' reads one official file, got 2" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()
