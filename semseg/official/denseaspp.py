"""DeepMotionAIResearch/DenseASPP checkpoints (``weights/denseASPP161.pkl``, Cityscapes) → ``denseaspp_densenet*``.

Layout read from ``models/DenseASPP.py`` of that repository: ``features`` is torchvision's DenseNet under its
PyTorch 0.3 module names (``denselayer<i>.norm.1`` / ``conv.1`` / ``norm.2`` / ``conv.2``: the same rename
torchvision applies to its own legacy ImageNet files, and ``_LEGACY_KEY`` in ``semseg/models/denseaspp.py``),
``transition4`` = (``norm``, relu, ``conv``) and ``norm5``; ``ASPP_<rate>`` = (``norm.1``, relu, ``conv.1``,
``norm.2``, relu, ``conv.2``), without ``norm.1`` at rate 3; ``classification`` = (dropout, 1×1 conv,
×8 bilinear). The released file is DenseASPP161 (``demo.py``'s default), saved by ``DataParallel``
(``module.``) with PyTorch 0.3.1, so no BN counters. BN eps is PyTorch's 1e-5 (ours too); the ×8 upsampling is
0.3.1's ``nn.Upsample``, i.e. ``align_corners=True``; the input is normalised with the Cityscapes mean/std of
``inference.py``.
"""

from __future__ import annotations

from semseg.official import OFFICIAL, Converter, Rule

MODELS = ("denseaspp_densenet121", "denseaspp_densenet161")
RATES = (3, 6, 12, 18, 24)  # ASPP_3 … ASPP_24, our aspp.layers.0 … 4
# (official name inside ASPP_<rate>, our Sequential index): DenseASPPLayer is [(BN, ReLU,) conv, BN, ReLU, conv, drop]
_FIRST = ((r"conv\.1", 0), (r"norm\.2", 1), (r"conv\.2", 3))
_LATER = ((r"norm\.1", 0), (r"conv\.1", 2), (r"norm\.2", 3), (r"conv\.2", 5))
MEAN = [0.290101, 0.328081, 0.286964]  # inference.py data_transforms (RGB, ToTensor range)
STD = [0.182954, 0.186566, 0.184475]


def _aspp() -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for i, rate in enumerate(RATES):
        for name, index in _LATER if i else _FIRST:
            rules.append((rf"ASPP_{rate}\.{name}\.(.+)", rf"aspp.layers.{i}.{index}.\1"))
    return tuple(rules)


RULES = (
    (r"features\.(denseblock\d\.denselayer\d+)\.(norm|conv)\.([12])\.(.+)", r"backbone.features.\1.\2\3.\4"),
    (r"features\.transition4\.norm\.(.+)", r"backbone.features.transition4.0.\1"),
    (r"features\.transition4\.conv\.(.+)", r"backbone.features.transition4.2.\1"),
    (r"features\.((?:transition[123]|conv0|norm0|norm5)\..+)", r"backbone.features.\1"),
    *_aspp(),
    (r"classification\.1\.(.+)", r"classifier.\1"),
)


@OFFICIAL.register("deepmotion_denseaspp", models=MODELS,
                   files="DeepMotionAIResearch/DenseASPP weights/denseASPP161.pkl (Google Drive link in its README)")
def deepmotion_denseaspp() -> Converter:
    """Rename only; the release's Cityscapes normalisation."""
    return Converter(models=MODELS, rules=RULES, model_params={"align_corners": True},
                     augment={"mean": MEAN, "std": STD})
