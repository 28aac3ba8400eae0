"""hszhao/semseg PSPNet checkpoints (ADE20K / VOC2012 / Cityscapes ``train_epoch_*.pth``) → ``pspnet*_deepstem``.

Layout read from ``model/pspnet.py`` and ``model/resnet.py`` of that repository: the
trunk is ``layer0`` = Sequential(conv1, bn1, relu, conv2, bn2, relu, conv3, bn3, relu,
maxpool) (the 3×3 deep stem), then torchvision-style ``layer1``–``layer4`` (stride on
the 3×3 conv); the PPM is ``ppm.features.<i>`` = (pool, conv, bn, relu); the heads are
``cls`` / ``aux`` = (3×3 conv, bn, relu, dropout, 1×1 conv). Files are saved by
``DataParallel`` (``module.``) inside ``{'state_dict': …}``. Upsampling is
``align_corners=True`` there, which is our default.
"""

from __future__ import annotations

from semseg.official import OFFICIAL, Converter

MODELS = ("pspnet50_deepstem", "pspnet101_deepstem")
RULES = (
    (r"layer0\.([013467])\.(.+)", r"backbone.stem.\1.\2"),  # the same Sequential indices as our deep stem
    (r"(layer[1-4]\..+)", r"backbone.\1"),
    (r"ppm\.features\.(\d)\.1\.(.+)", r"ppm.stages.\1.1.0.\2"),  # (pool, conv, bn, relu) → (pool, ConvBNReLU)
    (r"ppm\.features\.(\d)\.2\.(.+)", r"ppm.stages.\1.1.1.\2"),
    (r"cls\.0\.(.+)", r"head.0.0.\1"),  # (conv, bn, relu, dropout, conv) → (ConvBNReLU, dropout, conv)
    (r"cls\.1\.(.+)", r"head.0.1.\1"),
    (r"cls\.4\.(.+)", r"head.2.\1"),
    (r"aux\.0\.(.+)", r"aux.0.0.\1"),
    (r"aux\.1\.(.+)", r"aux.0.1.\1"),
    (r"aux\.4\.(.+)", r"aux.2.\1"),
)


@OFFICIAL.register("hszhao_pspnet", models=MODELS,
                   files="hszhao/semseg exp/<ade20k|voc2012|cityscapes>/pspnet<50|101>/model/train_epoch_*.pth")
def hszhao_pspnet() -> Converter:
    """Rename only: every official tensor has its counterpart."""
    return Converter(models=MODELS, rules=RULES, model_params={"align_corners": True})
