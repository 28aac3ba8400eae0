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
config sets ``align_corners: true``. The full ESPNet (``pretrained/decoder/*.pth``) does not load into
our 19-class model: its whole decoder is ``classes`` wide (20 for Cityscapes, 12 for CamVid), see doc/espnet.md.
"""

from __future__ import annotations

import torch

from semseg.official import OFFICIAL, Converter

MEAN_BGR = (72.3923111, 82.90893555, 73.15840149)  # test/VisualizeResults.py "global mean and std values"
STD_BGR = (45.3192215, 46.15289307, 44.91483307)
RULES = ((r"((?:level1|b[123]|level2_0|level3_0|level[23]\.\d+|classifier)\..+)", r"\1"),)  # the same names
# (our key, dimension, first of the three image channels): the convs the (pooled) image enters
_IMAGE_CONVS = (("level1.conv.weight", 1, 0), ("level2_0.c1.conv.weight", 1, 16), ("level3_0.c1.conv.weight", 1, 128))
_IMAGE_BRS = (("b1", 16), ("b2", 128))  # BN + PReLU over [features, image]


def _flip3(t: torch.Tensor, dim: int, start: int) -> torch.Tensor:
    index = torch.arange(t.shape[dim])
    index[start:start + 3] = index[start:start + 3].flip(0)
    return t.index_select(dim, index)


def _bgr_to_rgb(state: dict[str, torch.Tensor]) -> None:
    for key, dim, start in _IMAGE_CONVS:
        state[key] = _flip3(state[key], dim, start)
    for name, start in _IMAGE_BRS:
        for key in (*(f"{name}.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var")),
                    f"{name}.act.weight"):
            state[key] = _flip3(state[key], 0, start)


@OFFICIAL.register("sacmehta_espnet_c", models=("espnet_c",),
                   files="sacmehta/ESPNet pretrained/encoder/espnet_p_2_q_8.pth (q_3/q_5: --set model.params.q=3|5)")
def sacmehta_espnet_c() -> Converter:
    """Same names; the void output dropped, BGR channels reversed, their normalisation and upsampling in the config."""
    return Converter(
        models=("espnet_c",), rules=RULES, fix=_bgr_to_rgb, class_dims={"classifier.conv.weight": 0},
        model_params={"align_corners": True},
        augment={"mean": [m / 255 for m in reversed(MEAN_BGR)], "std": list(reversed(STD_BGR))},
    )
