"""CSAILVision/semantic-segmentation-pytorch UPerNet checkpoints (ADE20K) → ``upernet_resnet*_deepstem``.

The release saves each model as two files (``train.py`` ``checkpoint``: ``net_encoder.state_dict()`` and
``net_decoder.state_dict()``, no wrapper, no ``module.``): ``ckpt/ade20k-resnet50-upernet/encoder_epoch_30.pth`` +
``decoder_epoch_30.pth`` and ``ckpt/ade20k-resnet101-upernet/encoder_epoch_50.pth`` + ``decoder_epoch_50.pth``.
``PARTS`` names them; ``tools/convert_weights.py`` reads ``encoder=FILE decoder=FILE`` and prefixes each file's
keys with its part, which the rules below match.

Layout read from ``mit_semseg/models/models.py`` and ``resnet.py``: the encoder (``class Resnet``) is the deep-stem
ResNet, ``conv1``/``bn1``, ``conv2``/``bn2``, ``conv3``/``bn3`` (3×3 convs 3→64 stride 2, 64→64, 64→128) and
torchvision-style ``layer1``–``layer4`` (stride on the 3×3 conv), no fc; the decoder (``class UPerNet``, built by
``ModelBuilder.build_decoder('upernet')`` with ``fpn_dim=512``) is ``ppm_conv.<i>`` = (conv, bn, relu) after the
pool and the upsampling, ``ppm_last_conv`` = conv3x3_bn_relu, ``fpn_in.<i>`` = (conv 1×1, bn, relu),
``fpn_out.<i>`` = Sequential(conv3x3_bn_relu), ``conv_last`` = (conv3x3_bn_relu, conv 1×1 with bias); the same
order as ours (PPM convolves after upsampling, laterals added to the upsampled level, all four levels fused at
1/4). Its ``SynchronizedBatchNorm2d`` has PyTorch's eps 1e-5; every resize is ``align_corners=False``; images are
RGB 0–1 normalised with the ImageNet mean/std (``dataset.py``): all our defaults. The release's 150 outputs are
ADE20K's classes 1–150 (its labels are shifted by one, 0 = ignore), the order of our ``ade20k`` loader.
"""

from __future__ import annotations

from semseg.official import OFFICIAL, Converter

MODELS = ("upernet_resnet50_deepstem", "upernet_resnet101_deepstem")
PARTS = ("encoder", "decoder")  # one file each: encoder_epoch_*.pth, decoder_epoch_*.pth
FPN_DIM = 512  # build_decoder('upernet'); 'upernet_lite' is 256
_STEM = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4, "conv3": 6, "bn3": 7}  # our stem's Sequential indices
RULES = (
    *((rf"encoder\.{name}\.(.+)", rf"backbone.stem.{i}.\1") for name, i in _STEM.items()),
    (r"encoder\.(layer[1-4]\..+)", r"backbone.\1"),
    (r"decoder\.ppm_conv\.(\d)\.([01])\.(.+)", r"ppm.convs.\1.\2.\3"),  # (conv, bn, relu) = our ConvBNReLU
    (r"decoder\.ppm_last_conv\.([01])\.(.+)", r"ppm.fuse.\1.\2"),
    (r"decoder\.fpn_in\.(\d)\.([01])\.(.+)", r"fpn.lateral.\1.\2.\3"),
    (r"decoder\.fpn_out\.(\d)\.0\.([01])\.(.+)", r"fpn.smooth.\1.\2.\3"),  # Sequential(conv3x3_bn_relu)
    (r"decoder\.conv_last\.0\.([01])\.(.+)", r"fuse.\1.\2"),
    (r"decoder\.conv_last\.1\.(.+)", r"classifier.\1"),
)


@OFFICIAL.register("csail_upernet", models=MODELS, parts=PARTS,
                   files="CSAILVision/semantic-segmentation-pytorch (sceneparsing.csail.mit.edu/model/pytorch) "
                         "ade20k-resnet<50|101>-upernet/<encoder|decoder>_epoch_<30|50>.pth")
def csail_upernet() -> Converter:
    """Rename only; the 512-wide decoder, and the release's align_corners=False (our default) made explicit."""
    return Converter(models=MODELS, rules=RULES, model_params={"align_corners": False, "fpn_dim": FPN_DIM})
