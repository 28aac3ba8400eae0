"""jfzhang95/pytorch-deeplab-xception ResNet checkpoint (``deeplab-resnet.pth.tar``, VOC) → deeplabv3plus_resnet101.

The authors released TensorFlow weights only; this is the most used PyTorch port whose layout is our model's.
Layout read from its ``modeling/deeplab.py``, ``aspp.py``, ``decoder.py`` and ``backbone/resnet.py``: a
torchvision-named ResNet-101 (``backbone.conv1`` / ``bn1`` / ``layer1``–``layer4``, stride on the 3×3 conv,
multi-grid (1, 2, 4) × 2 in layer4 at output stride 16, no fc); ASPP ``aspp1`` (1×1) … ``aspp4`` (3×3 at 6, 12,
18) as ``atrous_conv`` + ``bn``, the image-pooling branch ``global_avg_pool`` = (pool, conv, bn, relu), then
``conv1`` + ``bn1`` (1280 → 256) and dropout; the decoder's ``conv1`` + ``bn1`` (layer1 256 → 48), the ASPP
output upsampled and concatenated in front, ``last_conv`` = (3×3 304 → 256, bn, relu, dropout 0.5, 3×3
256 → 256, bn, relu, dropout 0.1, 1×1 classifier). Every resize is ``align_corners=True``, BN eps 1e-5,
ImageNet mean/std on RGB 0–1 (``dataloaders/datasets/pascal.py``), all as ours. The released model is trained
and evaluated at output stride 16 (README: "train/eval os 16/16"), so the config keeps 16 in eval mode.

Their MobileNetV2 checkpoint does not map: its decoder reads the 24-channel output of ``features[3]``, ours the
144-channel depthwise output inside that block (the TF code's end point). VainF/DeepLabV3Plus-Pytorch does not
map either: one 3×3 decoder conv instead of two, layer4 without multi-grid (rates 1, 2, 2), ``align_corners=False``.
"""

from __future__ import annotations

from semseg.official import OFFICIAL, Converter

MODELS = ("deeplabv3plus_resnet101",)
RULES = (
    (r"backbone\.conv1\.(.+)", r"backbone.stem.0.\1"),
    (r"backbone\.bn1\.(.+)", r"backbone.stem.1.\1"),
    (r"backbone\.(layer[1-4]\..+)", r"backbone.\1"),
    *((rf"aspp\.aspp{i + 1}\.atrous_conv\.(.+)", rf"aspp.branches.{i}.0.\1") for i in range(4)),
    *((rf"aspp\.aspp{i + 1}\.bn\.(.+)", rf"aspp.branches.{i}.1.\1") for i in range(4)),
    (r"aspp\.global_avg_pool\.1\.(.+)", r"aspp.pool.1.0.\1"),
    (r"aspp\.global_avg_pool\.2\.(.+)", r"aspp.pool.1.1.\1"),
    (r"aspp\.conv1\.(.+)", r"aspp.project.0.\1"),
    (r"aspp\.bn1\.(.+)", r"aspp.project.1.\1"),
    (r"decoder\.conv1\.(.+)", r"reduce.0.\1"),
    (r"decoder\.bn1\.(.+)", r"reduce.1.\1"),
    # last_conv = (conv, bn, relu, drop) × 2, conv → our two ConvBNReLU and the classifier
    (r"decoder\.last_conv\.0\.(.+)", r"decoder.0.0.\1"),
    (r"decoder\.last_conv\.1\.(.+)", r"decoder.0.1.\1"),
    (r"decoder\.last_conv\.4\.(.+)", r"decoder.1.0.\1"),
    (r"decoder\.last_conv\.5\.(.+)", r"decoder.1.1.\1"),
    (r"decoder\.last_conv\.8\.(.+)", r"classifier.\1"),
)


@OFFICIAL.register("jfzhang95_deeplabv3plus", models=MODELS,
                   files="jfzhang95/pytorch-deeplab-xception deeplab-resnet.pth.tar (VOC; Google Drive, its README)")
def jfzhang95_deeplabv3plus() -> Converter:
    """Rename only; evaluated at output stride 16 as the port's release."""
    return Converter(models=MODELS, rules=RULES, model_params={"eval_output_stride": None, "align_corners": True})
