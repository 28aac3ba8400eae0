"""Predicting class ids for single images of any size (used by test.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn

from semseg.config import AugmentConfig


@torch.no_grad()
def predict_image(model: nn.Module, image: Image.Image, cfg: AugmentConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(class ids H×W, confidence H×W) at the image's own size.

    The image is normalised as in training; with ``augment.eval_size`` it is
    resized for the network and the class scores are resized back (bilinear on
    probabilities, so the labels stay sharp).
    """
    model.eval()
    x = TF.normalize(TF.to_tensor(image.convert("RGB")), list(cfg.mean), list(cfg.std))[None].to(device)
    if cfg.eval_size is not None:
        x = F.interpolate(x, size=cfg.eval_size, mode="bilinear", align_corners=False)
    probs = model(x)["out"].float().softmax(1)
    if probs.shape[-2:] != (image.height, image.width):
        probs = F.interpolate(probs, size=(image.height, image.width), mode="bilinear", align_corners=False)
    confidence, ids = probs[0].max(0)
    return ids.cpu(), confidence.cpu()
