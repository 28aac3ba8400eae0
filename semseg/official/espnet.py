"""sacmehta/ESPNet ESPNet-C checkpoints (``pretrained/encoder/espnet_p_2_q_<3|5|8>.pth``, Cityscapes) → ``espnet_c``.

Layout read from ``train/Model.py`` (``ESPNet_Encoder``): our modules carry the official names, so every key
maps to itself (a full ESPNet file's ``encoder.*`` keys are refused as another layout). Three things differ
from our pipeline, and the converter takes care of them:

- **20 outputs**: their Cityscapes labels are the 19 train ids plus void as class 19 (``test/VisualizeResults.py``
  maps 19 back to 255); the classifier's last output is dropped.
- **BGR input**: ``cv2.imread`` images. The image enters the network in three places (``level1``'s conv, and
  average-pooled into ``b1`` = BR(16 + 3) → ``level2_0`` and ``b2`` = BR(128 + 3) → ``level3_0``); reversing
  those three channels in each conv's input and each BN / PReLU is exact, since pooling works per channel.
- **Normalisation** ``((x₂₅₅ − mean) / std) / 255`` with their Cityscapes mean/std (BGR, 0–255;
  ``train/Transforms.py`` ``Normalize`` then ``ToTensor``'s ``div(255)``), which on our RGB 0–1 tensors is
  ``(x − mean/255) / std``: ``augment.mean`` = mean/255 and ``augment.std`` = std itself, both in RGB order.

BN eps 1e-3 is our ``espnet`` default already. The 1/8 scores are upsampled ×8 by ``test/VisualizeResults.py``'s
``nn.Upsample(scale_factor=8, mode='bilinear')`` under PyTorch 0.3 (README), which aligns corners: the converted
config sets ``align_corners: true``.

The full ESPNet files (``pretrained/decoder/espnet_p_2_q_<3|5|8>.pth``, Cityscapes, from ``test/Model.py``: the
last conv fuses level 1's 16 channels; ``espnet_p_2_q_8_camvid.pth`` from ``train/Model.py``: level 1 + the
image, 19) have the encoder under ``encoder.`` and a decoder that is ``classes`` wide throughout (20 = 19 + void,
12 = 11 + void), so our ``espnet`` is built with ``extra_outputs: 1`` and drops the void output at the end. The
image also reaches the decoder, through ``level3_C`` (the 1/4 concat) and, in the CamVid file, the last conv:
their image channels are reversed too. The CamVid file's mean/std are its training set's (``train/loadData.py``:
per-image channel means and stds averaged over the training images, BGR 0–255), which the release does not
include; ours are computed the same way over the SegNet train split it was trained on (README: SegNet splits,
480×360).
"""

from __future__ import annotations

from typing import Callable

import torch

from semseg.errors import CheckpointError
from semseg.official import OFFICIAL, Converter

MEAN_BGR = (72.3923111, 82.90893555, 73.15840149)  # test/VisualizeResults.py "global mean and std values"
STD_BGR = (45.3192215, 46.15289307, 44.91483307)
CAMVID_MEAN_BGR = (110.331, 108.409, 105.033)  # loadData.py's statistics of the 367 SegNet CamVid train images
CAMVID_STD_BGR = (72.126, 72.691, 69.904)
_ENCODER = r"level1|b[123]|level2_0|level3_0|level[23]\.\d+|classifier"  # ESPNet_Encoder's modules
RULES = ((rf"((?:{_ENCODER})\..+)", r"\1"),)  # the same names
FULL_RULES = ((rf"((?:encoder\.(?:{_ENCODER})|level3_C|br|conv|up_l3|combine_l2_l3|up_l2|classifier)\..+)", r"\1"),)
# (our key, dimension, first of the three image channels): the convs the (pooled) image enters
_IMAGE_CONVS = (("level1.conv.weight", 1, 0), ("level2_0.c1.conv.weight", 1, 16), ("level3_0.c1.conv.weight", 1, 128))
_IMAGE_BRS = (("b1", 16), ("b2", 128))  # BN + PReLU over [features, image]


def _flip3(t: torch.Tensor, dim: int, start: int) -> torch.Tensor:
    index = torch.arange(t.shape[dim])
    index[start:start + 3] = index[start:start + 3].flip(0)
    return t.index_select(dim, index)


def _bgr_to_rgb(state: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Reverse the image channels where the (pooled) image enters the encoder held under ``prefix``."""
    for key, dim, start in _IMAGE_CONVS:
        state[prefix + key] = _flip3(state[prefix + key], dim, start)
    for name, start in _IMAGE_BRS:
        for key in (*(f"{name}.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var")),
                    f"{name}.act.weight"):
            state[prefix + key] = _flip3(state[prefix + key], 0, start)


def _full_bgr_to_rgb(fuse_image: bool) -> Callable[[dict[str, torch.Tensor]], None]:
    """The encoder's image entries (under ``encoder.``), ``level3_C`` (reads the 1/4 concat: image at 128) and, when
    the last conv fuses level 1 + image, that conv's image inputs (after the ``classes`` upsampled ones)."""

    def fix(state: dict[str, torch.Tensor]) -> None:
        _bgr_to_rgb(state, "encoder.")
        state["level3_C.conv.weight"] = _flip3(state["level3_C.conv.weight"], 1, 128)
        if fuse_image:
            weight = state["conv.conv.weight"]
            state["conv.conv.weight"] = _flip3(weight, 1, weight.shape[0] + 16)

    return fix


def _fusion_check(fuse_image: bool, other: str) -> Callable[[dict[str, torch.Tensor]], None]:
    """The last conv's inputs tell which decoder the file is: classes + 16 (level 1) or classes + 19 (+ image)."""

    def check(official: dict[str, torch.Tensor]) -> None:
        weight = official.get("conv.conv.weight")
        if weight is not None and weight.shape[1] - weight.shape[0] != (19 if fuse_image else 16):
            raise CheckpointError(f"conv.conv.weight: fuses {weight.shape[1] - weight.shape[0]} level-1 channels, "
                                  f"not {19 if fuse_image else 16}; try --layout {other}")

    return check


def _full(fuse_image: bool, mean_bgr: tuple[float, ...], std_bgr: tuple[float, ...], other: str) -> Converter:
    return Converter(
        models=("espnet",), rules=FULL_RULES, fix=_full_bgr_to_rgb(fuse_image),
        checks=(_fusion_check(fuse_image, other),),
        model_params={"extra_outputs": 1, "fuse_image": fuse_image},
        augment={"mean": [m / 255 for m in reversed(mean_bgr)], "std": list(reversed(std_bgr))},
    )


@OFFICIAL.register("sacmehta_espnet", models=("espnet",),
                   files="sacmehta/ESPNet pretrained/decoder/espnet_p_2_q_8.pth (q_3/q_5: --set model.params.q=3|5)")
def sacmehta_espnet() -> Converter:
    """Same names; built one output wider (void, dropped), BGR channels reversed, their normalisation in the config."""
    return _full(False, MEAN_BGR, STD_BGR, "sacmehta_espnet_camvid")


@OFFICIAL.register("sacmehta_espnet_camvid", models=("espnet",),
                   files="sacmehta/ESPNet pretrained/decoder/espnet_p_2_q_8_camvid.pth")
def sacmehta_espnet_camvid() -> Converter:
    """As ``sacmehta_espnet`` for the CamVid file: its last conv also fuses the image; CamVid's mean/std."""
    return _full(True, CAMVID_MEAN_BGR, CAMVID_STD_BGR, "sacmehta_espnet")


@OFFICIAL.register("sacmehta_espnet_c", models=("espnet_c",),
                   files="sacmehta/ESPNet pretrained/encoder/espnet_p_2_q_8.pth (q_3/q_5: --set model.params.q=3|5)")
def sacmehta_espnet_c() -> Converter:
    """Same names; the void output dropped, BGR channels reversed, their normalisation and upsampling in the config."""
    return Converter(
        models=("espnet_c",), rules=RULES, fix=_bgr_to_rgb, class_dims={"classifier.conv.weight": 0},
        model_params={"align_corners": True},
        augment={"mean": [m / 255 for m in reversed(MEAN_BGR)], "std": list(reversed(STD_BGR))},
    )
