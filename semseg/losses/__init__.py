"""Losses (registered by name), class weighting, and the criterion over model outputs.

Every non-underscore module here is imported on package import, so a new loss is one new file
with ``@LOSSES.register("name")``. A loss is an ``nn.Module`` built as
``Loss(ignore_index=…, weight=…, **params)`` whose ``forward(logits N×C×H×W, target N×H×W)``
returns a scalar in float32. See ``doc/losses.md``.
"""

from __future__ import annotations

import importlib
import pkgutil

from semseg.losses._weights import ENET_C, class_pixel_counts, class_weights
from semseg.losses.criterion import Criterion, WeightedSum, build_criterion
from semseg.losses.cross_entropy import CrossEntropy, OhemCrossEntropy
from semseg.losses.dice import DiceLoss
from semseg.losses.focal import FocalLoss
from semseg.losses.lovasz import LovaszSoftmax
from semseg.registry import LOSSES

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ENET_C", "LOSSES", "Criterion", "CrossEntropy", "DiceLoss", "FocalLoss", "LovaszSoftmax", "OhemCrossEntropy",
    "WeightedSum", "build_criterion", "class_pixel_counts", "class_weights",
]  # fmt: skip
