"""fyu/drn segmentation checkpoints (``DRNSeg``, e.g. the Cityscapes ``drn_d_22_cityscapes.pth``) → ``drn_*``.

Layout read from fyu/drn ``segment.py``: ``DRNSeg.base`` is
``nn.Sequential(*list(drn.children())[:-2])``, so the trunk's modules are numbered in the
order ``drn.py`` creates them: DRN-C ``conv1, bn1, relu, layer1 … layer8`` (base.0 … base.10),
DRN-D ``layer0, layer1 … layer8`` (base.0 … base.8); ``seg`` is the 1×1 classifier and
``up`` the fixed bilinear ConvTranspose (``fill_up_weights``), which we build as a buffer.
The ImageNet files need no converter: ``pretrained_backbone`` loads them as they are.
"""

from __future__ import annotations

from semseg.official import OFFICIAL, Converter, bilinear_check

C_MODELS = ("drn_c_26", "drn_c_42")
D_MODELS = ("drn_d_22", "drn_d_38", "drn_d_54", "drn_d_105")
_SEG = ((r"seg\.(.+)", r"seg.\1"),)


@OFFICIAL.register("fyu_drn_c", models=C_MODELS, files="fyu/drn DRNSeg checkpoints of drn_c_26 / drn_c_42")
def fyu_drn_c() -> Converter:
    level = tuple((rf"base\.{i + 2}\.(.+)", rf"base.layer{i}.\1") for i in range(1, 9))
    rules = ((r"base\.0\.(.+)", r"base.conv1.\1"), (r"base\.1\.(.+)", r"base.bn1.\1")) + level + _SEG
    return Converter(models=C_MODELS, rules=rules, drop=(r"up\.weight",), checks=(bilinear_check("up.weight"),))


@OFFICIAL.register("fyu_drn_d", models=D_MODELS,
                   files="fyu/drn DRNSeg checkpoints of drn_d_* (drn_d_22_cityscapes.pth, drn_d_38_cityscapes.pth)")
def fyu_drn_d() -> Converter:
    rules = tuple((rf"base\.{i}\.(.+)", rf"base.layer{i}.\1") for i in range(9)) + _SEG
    return Converter(models=D_MODELS, rules=rules, drop=(r"up\.weight",), checks=(bilinear_check("up.weight"),))
