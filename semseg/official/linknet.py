"""e-lab/LinkNet Torch7 releases (``model-*.net``, CamVid 576×768 and Cityscapes 512×1024) → ``linknet``.

Layout read from ``models/model.lua`` (the module tree ``torch.save`` writes; keys are
index paths, see ``_torch7``): children 0–3 are fb.resnet.torch's ResNet-18 stem (conv,
BN, ReLU, max-pool), child 4 the nested encoder/decoder, then the final block: 5 full
conv 64→32, 6 BN, 8 conv 32→32, 9 BN, 11 full conv 32→classes. Level *k* of the nesting
(``bypass2dec``) is ``Sequential(ConcatTable(prim, Identity), CAddTable, ReLU)`` with
``prim = (layer k, level k+1, decoder k)`` (level 4: ``(layer 4, decoder 4)``), so level
*k* sits at ``4`` + ``.0.0.1`` × (k−1). A ResNet block is ``Sequential(ConcatTable(body,
shortcut), CAddTable, ReLU)`` with ``body = (conv, BN, ReLU, conv, BN)``; a decoder is
``(conv 1×1, BN, ReLU, full conv 3×3, BN, ReLU, conv 1×1, BN, ReLU)``. The ReLU after each
sum is the identity (both addends are ReLU outputs), so our model has none.

Every conv and full conv there may carry a bias (fb.resnet.torch drops the trunk's
under cuDNN ≥ 4; the decoder keeps them); each sits before a BN and is folded into its
running mean. The classifier's outputs are the authors' class lists (``data/load*.lua``):
``Unlabeled`` first, dropped, and CamVid's other eleven in their own order, permuted
to ours. Their input is RGB 0–1 minus the training set's mean (a per-pixel mean image
for CamVid, per-channel for Cityscapes; no std): the config takes the channel means
(of our CamVid train split; Cityscapes' standard ones), and scores at their resolution.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from semseg.errors import CheckpointError
from semseg.official import OFFICIAL, Converter, Rule
from semseg.official._torch7 import read_torch7

# data/loadCamVid.lua: Unlabeled, Road, Building, Fence, Tree, Sidewalk, SignSymbol, ColumnPole, Car,
# Pedestrian, Bicyclist, Sky → our sky, building, pole, road, pavement, tree, sign_symbol, fence, car,
# pedestrian, bicyclist
CAMVID_ORDER = (11, 2, 7, 1, 5, 4, 6, 3, 8, 9, 10)
CITYSCAPES_ORDER = tuple(range(1, 20))  # data/loadCityscapes.lua: Unlabeled, then the 19 train ids in order
CAMVID_MEAN = (0.4119, 0.4251, 0.4327)  # RGB 0–1, our CamVid train split (the authors': 367 of the same frames)
CITYSCAPES_MEAN = (0.2869, 0.3251, 0.2839)  # RGB 0–1, the Cityscapes train split


def _layer(path: str, ours: str) -> list[Rule]:
    return [(rf"{re.escape(path)}\.(weight|bias|running_mean|running_var)", rf"{ours}.\1")]


def _rules() -> tuple[Rule, ...]:
    rules = [*_layer("0", "encoder.stem.0"), *_layer("1", "encoder.stem.1")]
    level = "4"
    for k in range(1, 5):
        for b in (0, 1):  # the two BasicBlocks of layer k
            block = f"{level}.0.0.0.{b}.0"  # ConcatTable(body, shortcut)
            for torch_i, ours in (("0.0", "conv1"), ("0.1", "bn1"), ("0.3", "conv2"), ("0.4", "bn2"),
                                  ("1.0", "downsample.0"), ("1.1", "downsample.1")):
                rules += _layer(f"{block}.{torch_i}", f"encoder.layer{k}.{b}.{ours}")
        decoder = f"{level}.0.0.{1 if k == 4 else 2}"
        for torch_i, ours in (("0", "reduce.0"), ("1", "reduce.1"), ("3", "up.conv"), ("4", "up.bn"),
                              ("6", "expand.0"), ("7", "expand.1")):
            rules += _layer(f"{decoder}.{torch_i}", f"decoder{k}.{ours}")
        level += ".0.0.1"
    for torch_i, ours in (("5", "final_up.conv"), ("6", "final_up.bn"), ("8", "final_conv.0"),
                          ("9", "final_conv.1"), ("11", "classifier")):
        rules += _layer(torch_i, ours)
    return tuple(rules)


RULES = _rules()
FOLDS = (
    (r"encoder\.stem\.0\.bias", "encoder.stem.1"),
    (r"(encoder\.layer\d\.\d)\.conv([12])\.bias", r"\1.bn\2"),
    (r"(encoder\.layer\d\.\d\.downsample)\.0\.bias", r"\1.1"),
    (r"(decoder\d\.(?:reduce|expand)|final_conv)\.0\.bias", r"\1.1"),
    (r"(decoder\d\.up|final_up)\.conv\.bias", r"\1.bn"),
)


def _classes_check(order: tuple[int, ...], other: str) -> Callable[[dict[str, torch.Tensor]], None]:
    """The classifier must have this class list's outputs (Unlabeled + ours); otherwise name the layout that fits."""

    def check(official: dict[str, torch.Tensor]) -> None:
        weight = official.get("11.weight")
        if weight is not None and weight.shape[1] != len(order) + 1:
            raise CheckpointError(f"11.weight: {weight.shape[1]} class outputs, not {len(order) + 1} "
                                  f"(Unlabeled + {len(order)}); try --layout {other}")

    return check


def _permute_classes(order: tuple[int, ...]) -> Callable[[dict[str, torch.Tensor]], None]:
    index = torch.tensor(order)

    def fix(state: dict[str, torch.Tensor]) -> None:  # ConvTranspose weight: (in, classes, k, k)
        state["classifier.weight"] = state["classifier.weight"].index_select(1, index)
        state["classifier.bias"] = state["classifier.bias"].index_select(0, index)

    return fix


def _converter(order: tuple[int, ...], mean: tuple[float, ...], size: list[int], other: str) -> Converter:
    return Converter(models=("linknet",), rules=RULES, folds=FOLDS, reader=read_torch7,
                     checks=(_classes_check(order, other),), fix=_permute_classes(order),
                     augment={"mean": list(mean), "std": [1.0, 1.0, 1.0], "eval_size": size})


@OFFICIAL.register("elab_linknet_camvid", models=("linknet",),
                   files="e-lab/LinkNet release, CamVid model-*.net (Torch7, 12 outputs, 576×768)")
def elab_linknet_camvid() -> Converter:
    """Index paths to names, pre-BN biases folded, Unlabeled dropped, classes in our order."""
    return _converter(CAMVID_ORDER, CAMVID_MEAN, [576, 768], "elab_linknet_cityscapes")


@OFFICIAL.register("elab_linknet_cityscapes", models=("linknet",),
                   files="e-lab/LinkNet release, Cityscapes model-*.net (Torch7, 20 outputs, 512×1024)")
def elab_linknet_cityscapes() -> Converter:
    """Index paths to names, pre-BN biases folded, Unlabeled dropped."""
    return _converter(CITYSCAPES_ORDER, CITYSCAPES_MEAN, [512, 1024], "elab_linknet_camvid")
