"""hszhao/semseg PSANet checkpoints (ADE20K / VOC2012 / Cityscapes ``train_epoch_*.pth``) → ``psanet*_deepstem``.

Layout read from ``model/psanet.py`` and ``model/resnet.py`` of that repository: the trunk is the same
``layer0`` (deep stem) + ``layer1``–``layer4`` as its PSPNet (``hszhao_pspnet``); ``psa`` holds the collect
branch as ``reduce`` = (conv, bn, relu) and ``attention`` = (conv, bn, relu, conv), the distribute branch as
``reduce_p`` / ``attention_p`` (``psa_type: 2``, every released model), and ``proj`` = (conv, bn, relu);
``cls`` / ``aux`` are PSPNet's heads. Files are saved by ``DataParallel`` (``module.``) inside
``{'state_dict': …}``. Upsampling is ``align_corners=True`` (our default), the input ImageNet mean/std on RGB
0–1 (``tool/test.py``, in 0–255 units there; our default), BN eps PyTorch's 1e-5.

The over-complete attention map is fixed by the training crop (``tool/train.py`` / ``test.py`` ``check``:
``mask = 2·((train_h - 1) // 16 + 1) - 1`` when the config leaves ``mask_h`` empty, as all released ones do):
59×59 for the 465×465 ADE20K and VOC2012 crops, 89×89 for the 705×705 Cityscapes crops, hence two layouts.
"""

from __future__ import annotations

from typing import Callable

import torch

from semseg.errors import CheckpointError
from semseg.official import OFFICIAL, Converter
from semseg.official.pspnet import RULES as PSPNET_RULES

MODELS = ("psanet_resnet50_deepstem", "psanet_resnet101_deepstem")
MASK_465 = 59  # ADE20K, VOC2012: train_h = train_w = 465 (config/<ade20k|voc2012>/*_psanet*.yaml)
MASK_705 = 89  # Cityscapes: train_h = train_w = 705
_TRUNK_AND_HEADS = tuple(r for r in PSPNET_RULES if not r[0].startswith(r"ppm"))
RULES = (
    *_TRUNK_AND_HEADS,
    (r"psa\.reduce\.([01])\.(.+)", r"psa.branches.0.reduce.\1.\2"),  # (conv, bn, relu) = our ConvBNReLU
    (r"psa\.reduce_p\.([01])\.(.+)", r"psa.branches.1.reduce.\1.\2"),
    (r"psa\.attention\.([01])\.(.+)", r"psa.branches.0.attention.0.\1.\2"),  # (conv, bn, relu, conv)
    (r"psa\.attention\.3\.(.+)", r"psa.branches.0.attention.1.\1"),  # → (ConvBNReLU, conv)
    (r"psa\.attention_p\.([01])\.(.+)", r"psa.branches.1.attention.0.\1.\2"),
    (r"psa\.attention_p\.3\.(.+)", r"psa.branches.1.attention.1.\1"),
    (r"psa\.proj\.([01])\.(.+)", r"psa.project.\1.\2"),
)


def _mask_check(mask: int, other: str) -> Callable[[dict[str, torch.Tensor]], None]:
    """The file's over-complete map must be this layout's mask; otherwise name the layout that fits."""

    def check(official: dict[str, torch.Tensor]) -> None:
        weight = official.get("psa.attention.3.weight")
        if weight is not None and weight.shape[0] != mask * mask:
            side = round(weight.shape[0] ** 0.5)
            raise CheckpointError(f"psa.attention.3.weight: a {side}×{side} attention map ({weight.shape[0]} "
                                  f"outputs), not {mask}×{mask}; try --layout {other}")

    return check


@OFFICIAL.register("hszhao_psanet", models=MODELS,
                   files="hszhao/semseg exp/<ade20k|voc2012>/psanet<50|101>/model/train_epoch_*.pth (465 crops)")
def hszhao_psanet() -> Converter:
    """Rename only; the 59×59 attention map of the 465×465 crops."""
    return Converter(models=MODELS, rules=RULES, checks=(_mask_check(MASK_465, "hszhao_psanet_cityscapes"),),
                     model_params={"align_corners": True, "mask_size": [MASK_465, MASK_465]})


@OFFICIAL.register("hszhao_psanet_cityscapes", models=MODELS,
                   files="hszhao/semseg exp/cityscapes/psanet<50|101>/model/train_epoch_200.pth (705 crops)")
def hszhao_psanet_cityscapes() -> Converter:
    """Rename only; the 89×89 attention map of the 705×705 crops."""
    return Converter(models=MODELS, rules=RULES, checks=(_mask_check(MASK_705, "hszhao_psanet"),),
                     model_params={"align_corners": True, "mask_size": [MASK_705, MASK_705]})
