"""Eromera/erfnet_pytorch checkpoints (``trained_models/erfnet_pretrained.pth``, Cityscapes) → ``erfnet``.

Layout read from ``train/erfnet.py``: ``encoder.initial_block`` and ``encoder.layers.<i>``
(0: downsampler 16→64, 1–5: non-bottleneck-1D at 64, 6: downsampler 64→128, 7–14: dilated
non-bottleneck-1D), the encoder-only ``encoder.output_conv`` (pre-training stage; unused
by the full net), ``decoder.layers.<i>`` (0: upsampler 128→64, 1–2: blocks at 64,
3: upsampler 64→16, 4–5: blocks at 16) and ``decoder.output_conv``. Every conv there has
a bias; those right before a BatchNorm (``conv`` of the down/upsamplers, ``conv1x3_*``) are
folded into the BN's running mean. The file is 20-class (19 + void 19, weight 0 in the
loss): the void output is dropped for our 19-class Cityscapes. Their input is ``ToTensor()``
only (0–1, no mean/std), hence the config's ``augment``.
"""

from __future__ import annotations

from semseg.official import OFFICIAL, Converter

RULES = (
    (r"encoder\.initial_block\.(.+)", r"down1.\1"),
    (r"encoder\.layers\.0\.(.+)", r"down2.\1"),
    *((rf"encoder\.layers\.{i}\.(.+)", rf"stage1.{i - 1}.\1") for i in range(1, 6)),
    (r"encoder\.layers\.6\.(.+)", r"down3.\1"),
    *((rf"encoder\.layers\.{i}\.(.+)", rf"stage2.{i - 7}.\1") for i in range(7, 15)),
    (r"decoder\.layers\.0\.(.+)", r"up1.\1"),
    (r"decoder\.layers\.1\.(.+)", r"dec1.0.\1"),
    (r"decoder\.layers\.2\.(.+)", r"dec1.1.\1"),
    (r"decoder\.layers\.3\.(.+)", r"up2.\1"),
    (r"decoder\.layers\.4\.(.+)", r"dec2.0.\1"),
    (r"decoder\.layers\.5\.(.+)", r"dec2.1.\1"),
    (r"decoder\.output_conv\.(.+)", r"output_conv.\1"),
)
FOLDS = ((r"(.+)\.conv1x3_([12])\.bias", r"\1.bn\2"), (r"((?:down|up)\d)\.conv\.bias", r"\1.bn"))


@OFFICIAL.register("eromera_erfnet", models=("erfnet",),
                   files="Eromera/erfnet_pytorch trained_models/erfnet_pretrained.pth")
def eromera_erfnet() -> Converter:
    """Rename, fold the pre-BN biases, drop the void output."""
    return Converter(
        models=("erfnet",), rules=RULES, drop=(r"encoder\.output_conv\..+",), folds=FOLDS,
        class_dims={"output_conv.weight": 1, "output_conv.bias": 0},  # ConvTranspose: (in, out, k, k)
        augment={"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    )
