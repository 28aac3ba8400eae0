"""Lua Torch releases (e-lab LinkNet) → our models, offline: a synthetic ``.net`` written in Torch7's format.

The file is built from the authors' ``model.lua`` wiring (tests/fixtures/torch7.py), written as ``torch.save``
writes it, read back by ``torchfile``; the converted model must give the logits of that Lua graph run as
Torch runs it (biases before BN, ConcatTable sums, ``adj`` full convolutions), in our class order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from semseg.build import restore
from semseg.errors import CheckpointError
from semseg.official import OFFICIAL, convert_state
from semseg.official._torch7 import read_torch7
from semseg.loaders import dataset_class
from semseg.registry import MODELS
from tests.fixtures import torch7 as T7

pytest.importorskip("torchfile")  # in requirements-test.txt; only the Torch7 converters need it

# e-lab/LinkNet data/loadCamVid.lua `classes`, in output order; our names for three of them
ELAB_CAMVID = ("Unlabeled", "Road", "Building", "Fence", "Tree", "Sidewalk", "SignSymbol", "ColumnPole", "Car",
               "Pedestrian", "Bicyclist", "Sky")
OUR_NAME = {"pole": "ColumnPole", "pavement": "Sidewalk", "sign_symbol": "SignSymbol"}
THEIR_OUTPUT = [ELAB_CAMVID.index(OUR_NAME.get(c, c.capitalize())) for c in dataset_class("camvid").CLASSES]


def _convert(layout: str, path: Path, num_classes: int) -> torch.nn.Module:
    conv = OFFICIAL.get(layout)()
    net = MODELS.build("linknet", num_classes=num_classes, **conv.model_params)
    net.load_state_dict(convert_state(conv, read_torch7(str(path)), net.state_dict(), str(path)), strict=True)
    return net.eval()


@pytest.mark.parametrize("trunk_bias", [False, True])
def test_elab_linknet_camvid_gives_the_lua_graphs_logits(tmp_path: Path, trunk_bias: bool) -> None:
    lua = T7.elab_linknet(12, seed=3, trunk_bias=trunk_bias)
    T7.save(tmp_path / "model-best.net", lua)
    net = _convert("elab_linknet_camvid", tmp_path / "model-best.net", 11)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ours, theirs = net(x)["out"], T7.run(lua, x)
    assert theirs.shape == (1, 12, 64, 96)
    torch.testing.assert_close(ours, theirs[:, THEIR_OUTPUT], rtol=1e-4, atol=1e-4)


def test_every_tensor_of_the_file_is_named_and_used(tmp_path: Path) -> None:
    T7.save(tmp_path / "m.net", T7.elab_linknet(20, seed=1, trunk_bias=True), tensor_type="torch.FloatTensor")
    state = read_torch7(str(tmp_path / "m.net"))
    # ResNet-18: stem + 16 block convs + 3 shortcuts; 4 decoders × 3; the final 3
    assert len([k for k in state if k.endswith("weight") and state[k].dim() == 4]) == 20 + 12 + 3
    assert state["4.0.0.0.0.0.0.0.weight"].shape == (64, 64, 3, 3)  # level 1: layer1 block 0 conv1
    assert state["4.0.0.1.0.0.1.0.0.0.0.0.0.0.weight"].shape == (256, 128, 3, 3)  # level 3: layer3 block 0 conv1
    assert state["4.0.0.1.0.0.1.0.0.1.0.0.0.0.0.1.0.weight"].shape == (512, 256, 1, 1)  # layer4's shortcut
    assert state["4.0.0.1.0.0.1.0.0.1.0.0.1.3.weight"].shape == (128, 128, 3, 3)  # decoder 4's full conv
    assert state["11.weight"].shape == (32, 20, 2, 2)
    net = _convert("elab_linknet_cityscapes", tmp_path / "m.net", 19)
    assert sum(p.numel() for p in net.parameters()) > 11e6


def test_old_running_std_and_2d_conv_weights_are_normalised(tmp_path: Path) -> None:
    b = T7.Builder(0)
    conv, bn = b.conv(3, 4, 3, 1, 1), b.bn(4, eps=1e-3)
    conv.fields["weight"] = conv.fields["weight"].reshape(4, 27)  # SpatialConvolutionMM
    var = bn.fields.pop("running_var")
    bn.fields["running_std"] = 1 / (var + 1e-3).sqrt()  # nn before mid-2016
    T7.save(tmp_path / "old.t7", T7.seq(conv, bn), tensor_type="torch.FloatTensor")
    state = read_torch7(str(tmp_path / "old.t7"))
    assert state["0.weight"].shape == (4, 3, 3, 3)
    torch.testing.assert_close(state["1.running_var"], var, rtol=1e-5, atol=1e-6)


def test_wrong_class_count_names_the_other_layout(tmp_path: Path) -> None:
    T7.save(tmp_path / "cs.net", T7.elab_linknet(20))
    with pytest.raises(CheckpointError, match="20 class outputs, not 12 .*try --layout elab_linknet_cityscapes"):
        _convert("elab_linknet_camvid", tmp_path / "cs.net", 11)


def test_unreadable_or_missing_reader_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "model.net"
    bad.write_bytes(b"PK\x03\x04 not a torch7 file")
    with pytest.raises(CheckpointError, match="model.net: cannot read as a Torch7 binary file"):
        read_torch7(str(bad))
    T7.save(tmp_path / "empty.t7", T7.seq(T7.relu()))
    with pytest.raises(CheckpointError, match="no nn module with parameters"):
        read_torch7(str(tmp_path / "empty.t7"))
    monkeypatch.setitem(sys.modules, "torchfile", None)
    with pytest.raises(CheckpointError, match=r"needs torchfile \(pip install torchfile\)"):
        read_torch7(str(bad))


def test_cli_converts_a_release_validate_restores(tmp_path: Path) -> None:
    """The first of the two commands; restore() is what validate.py runs first."""
    from tools import convert_weights

    lua = T7.elab_linknet(12, seed=7)
    src, out = tmp_path / "model-cv-IoU.net", tmp_path / "linknet_camvid.pt"
    T7.save(src, lua)
    assert convert_weights.main([str(src), str(out), "--layout", "elab_linknet_camvid", "--model", "linknet",
                                 "--dataset", "camvid", "--root", "/data/CamVid"]) == 0
    model, cfg, ckpt = restore(str(out), [])
    assert cfg.model.name == "linknet" and len(ckpt["classes"]) == 11
    assert tuple(cfg.augment.eval_size) == (576, 768) and tuple(cfg.augment.std) == (1.0, 1.0, 1.0)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)["out"], T7.run(lua, x)[:, THEIR_OUTPUT],
                                   rtol=1e-4, atol=1e-4)
