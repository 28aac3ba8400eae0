"""DrSleep's RefineNet-101 (refinenet-pytorch) and Light-Weight RefineNet (light-weight-refinenet) weights.

Layouts read from ``models/resnet.py`` and ``utils/layer_factory.py`` of both repositories.
The trunk is torchvision's ResNet (``conv1``, ``bn1``, ``layer1``–``layer4``). Block *k*
(1 = the 1/32 one, our ``blocks.<k-1>``) is ``p_ims1d2_outl<k>_dimred`` (adaptation conv),
``adapt_stage<k>_b`` (RefineNet: an ``RCUBlock`` of 2 units, keys ``<u>_conv`` with bias and
``<u>_conv_relu_varout_dimred``), ``adapt_stage<k>_b2_joint_varout_dimred`` (fusion conv of
its own path, k ≥ 2), ``mflow_conv_g<k>_pool`` (``CRPBlock``, keys ``<i>_outvar_dimred``),
``mflow_conv_g<k>_b`` (RefineNet: 3 output units) and ``mflow_conv_g<k>_b3_joint_varout_dimred``
(the fusion conv applied to block k's output inside block k+1); ``clf_conv`` is the classifier.
"""

from __future__ import annotations

from semseg.official import OFFICIAL, Converter, Rule

FULL = ("refinenet50", "refinenet101", "refinenet152")
LIGHT = ("refinenet_lw50", "refinenet_lw101", "refinenet_lw152")
_TRUNK = (
    (r"conv1\.(.+)", r"backbone.stem.0.\1"),
    (r"bn1\.(.+)", r"backbone.stem.1.\1"),
    (r"(layer[1-4]\..+)", r"backbone.\1"),
    (r"clf_conv\.(.+)", r"classifier.\1"),
)


def _decoder(full: bool) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for k in range(1, 5):
        b = f"blocks.{k - 1}"
        rules.append((rf"p_ims1d2_outl{k}_dimred\.(.+)", rf"{b}.adapt.0.\1"))
        rules.append((rf"adapt_stage{k}_b2_joint_varout_dimred\.(.+)", rf"{b}.fuse.0.\1"))
        rules.append((rf"mflow_conv_g{k}_b3_joint_varout_dimred\.(.+)", rf"blocks.{k}.fuse.1.\1"))
        rules += [(rf"mflow_conv_g{k}_pool\.0\.{i}_outvar_dimred\.(.+)", rf"{b}.crp.convs.{i - 1}.\1")
                  for i in range(1, 5)]
        if full:
            for u in (1, 2):  # adaptation RCUs sit after the adaptation conv: adapt.1, adapt.2
                rules.append((rf"adapt_stage{k}_b\.0\.{u}_conv\.(.+)", rf"{b}.adapt.{u}.conv1.\1"))
                rules.append((rf"adapt_stage{k}_b\.0\.{u}_conv_relu_varout_dimred\.(.+)", rf"{b}.adapt.{u}.conv2.\1"))
            for u in (1, 2, 3):
                out = f"{b}.output.{u - 1}"
                rules.append((rf"mflow_conv_g{k}_b\.0\.{u}_conv\.(.+)", rf"{out}.conv1.\1"))
                rules.append((rf"mflow_conv_g{k}_b\.0\.{u}_conv_relu_varout_dimred\.(.+)", rf"{out}.conv2.\1"))
    return tuple(rules)


@OFFICIAL.register("drsleep_refinenet", models=FULL,
                   files="DrSleep/refinenet-pytorch: rf101 VOC (models_urls['101_voc'])")
def drsleep_refinenet() -> Converter:
    """Rename only; the released file is ResNet-101 on VOC (21 classes)."""
    return Converter(models=FULL, rules=_TRUNK + _decoder(full=True), model_params={"align_corners": True})


@OFFICIAL.register("drsleep_lw_refinenet", models=LIGHT,
                   files="DrSleep/light-weight-refinenet: rf_lw50/101/152 for VOC, NYU, Person-Part, Context")
def drsleep_lw_refinenet() -> Converter:
    """Rename only; any of the released backbones and datasets."""
    return Converter(models=LIGHT, rules=_TRUNK + _decoder(full=False), model_params={"align_corners": True})
