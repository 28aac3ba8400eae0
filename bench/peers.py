"""The reference implementations ``bench/models.py --peers`` times our models against, and why each is or is not a twin.

They come from segmentation-models-pytorch (``bench/requirements.txt``), imported only when a
comparison runs; smp returns a tensor, so :class:`AsDict` puts it behind our ``{"out": …}`` contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

PEER_MULTIPLE = 32  # smp's check_input_shape: H and W divisible by the encoder's output stride


class AsDict(nn.Module):
    """``{"out": model(x)}``: puts a tensor-returning peer behind our output contract."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.model(x)}


@dataclass(frozen=True)
class Peer:
    label: str
    build: Callable[[int], nn.Module]
    twin: bool
    note: str


def smp_linknet(num_classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    return AsDict(smp.Linknet(encoder_name="resnet18", encoder_weights=None, classes=num_classes))


def smp_pspnet(num_classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    return AsDict(smp.PSPNet(encoder_name="resnet50", encoder_weights=None, classes=num_classes))


def smp_pspnet_dilated(num_classes: int) -> nn.Module:
    """smp's PSPNet configured like the paper: all of ResNet-50, dilated to output stride 8."""
    import segmentation_models_pytorch as smp

    model = smp.PSPNet(encoder_name="resnet50", encoder_weights=None, encoder_depth=5, upsampling=8, classes=num_classes)
    model.encoder.make_dilated(output_stride=8)
    return AsDict(model)


PEERS: dict[str, list[Peer]] = {
    "linknet": [Peer("smp.Linknet(resnet18)", smp_linknet, True,
                     "same ResNet-18 encoder, skip additions and 1×1 → ×2 full conv → 1×1 decoder blocks; smp uses "
                     "4×4 full convs and five ×2 blocks ending in a 1×1 classifier, the paper four (the first "
                     "without upsampling) and a final full-conv block")],
    "pspnet50": [
        Peer("smp.PSPNet(resnet50)", smp_pspnet, False,
             "not a twin: smp's default cuts ResNet-50 after layer2 (encoder_depth=3, stride 8 without dilation), "
             "pools 512 channels and has no aux head"),
        Peer("smp.PSPNet(resnet50, depth 5, dilated OS8)", smp_pspnet_dilated, False,
             "near twin: full dilated ResNet-50 + 1/2/3/6 pyramid; smp's head is 1×1 conv + 3×3 classifier, "
             "ours the paper's 3×3 conv 4096→512 + 1×1 classifier (most of the GFLOPs gap) plus the aux head in training"),
    ],
}  # fmt: skip
NO_PEER = {
    "fcn8s / fcn16s / fcn32s": "torchvision's fcn_resnet50 is a ResNet-50 FCN head, not the VGG-16 FCN-8s/16s/32s: no twin, not compared",
    "duc_hdc_resnet50 / pspnet50 vs deeplabv3_resnet50": "same dilated ResNet-50 but an ASPP head: not a twin, not compared",
}


def peer_size(size: tuple[int, int]) -> tuple[int, int]:
    return tuple(-(-s // PEER_MULTIPLE) * PEER_MULTIPLE for s in size)
