"""FCN-32s/16s/8s caffe weights as converted by wkentaro/pytorch-fcn (``fcn<32|16|8>s_from_caffe.pth``).

Layout read from that port's ``torchfcn/models/fcn{32,16,8}s.py``: ``conv<b>_<i>``, ``fc6``,
``fc7``, ``score_fr``, ``score_pool4`` / ``score_pool3``, the learnable 2× upsamplers
``upscore2`` and ``upscore_pool4`` (no bias), and the final ``upscore`` / ``upscore16`` /
``upscore8``, a fixed bilinear filter that we build as a buffer (checked, then dropped).
Only the staged nets load: the "at-once" FCN-8s scales pool3/pool4 inside its forward.
The caffe nets take BGR images in 0–255 minus the mean (104.00699, 116.66877, 122.67891):
conv1_1's input channels are reversed to RGB and the config normalises with that mean and
std 1/255, which is the same arithmetic on our RGB 0–1 tensors.
"""

from __future__ import annotations

import torch

from semseg.official import OFFICIAL, Converter, bilinear_check

_CONVS = ("1_1", "1_2", "2_1", "2_2", "3_1", "3_2", "3_3", "4_1", "4_2", "4_3", "5_1", "5_2", "5_3")
_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # their positions in our VGG16 features
RULES = (
    *((rf"conv{c}\.(.+)", rf"backbone.features.{i}.\1") for c, i in zip(_CONVS, _INDEX)),
    (r"(fc[67])\.(.+)", r"backbone.\1.\2"),
    (r"score_fr\.(.+)", r"score_fr.\1"),
    (r"score_(pool[34])\.(.+)", r"skip_scores.\1.\2"),
    (r"upscore2\.weight", r"skip_ups.pool4.weight"),  # score_fr ×2, then + pool4 scores
    (r"upscore_pool4\.weight", r"skip_ups.pool3.weight"),  # that sum ×2, then + pool3 scores
)
MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)  # torchfcn/datasets/voc.py


def _bgr_to_rgb(state: dict[str, torch.Tensor]) -> None:
    state["backbone.features.0.weight"] = state["backbone.features.0.weight"].flip(1)


@OFFICIAL.register("wkentaro_fcn", models=("fcn32s", "fcn16s", "fcn8s"),
                   files="wkentaro/pytorch-fcn fcn32s_from_caffe.pth, fcn16s_from_caffe.pth, fcn8s_from_caffe.pth")
def wkentaro_fcn() -> Converter:
    final = ("upscore.weight", "upscore16.weight", "upscore8.weight")
    return Converter(
        models=("fcn32s", "fcn16s", "fcn8s"), rules=RULES,
        drop=tuple(k.replace(".", r"\.") for k in final), checks=(bilinear_check(*final),), fix=_bgr_to_rgb,
        augment={"mean": [m / 255 for m in reversed(MEAN_BGR)], "std": [1 / 255] * 3},
    )
