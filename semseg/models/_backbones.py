"""Backbone helpers: loading ImageNet weights without ever falling back silently.

``pretrained_backbone`` in every builder is ``False`` (random init), ``True``
(torchvision's weight enum: downloaded once into the torch hub cache) or a path
to a local state-dict file. If weights were asked for and cannot be had, the
user gets a one-line :class:`ConfigError`, never a random init.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import nn

from semseg.errors import ConfigError
from semseg.models._blocks import ConvBNReLU

logger = logging.getLogger(__name__)

Pretrained = Union[bool, str]


def _read_local(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise ConfigError(f"model.params.pretrained_backbone: weight file '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise ConfigError(f"model.params.pretrained_backbone: cannot read '{path}': {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"model.params.pretrained_backbone: '{path}' holds no state dict")
    return state


def _download(weights: Any) -> dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - network/hash/IO errors all mean "unavailable"
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise ConfigError(
            f"model.params.pretrained_backbone: ImageNet weights {weights} are unavailable "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"put '{os.path.basename(weights.url)}' in {cache} or give a local file path"
        ) from None


def load_pretrained(
    module: nn.Module,
    pretrained: Pretrained,
    weights: Any,
    remap: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Load ImageNet weights into ``module`` when ``pretrained`` asks for them.

    ``weights`` is a torchvision ``WeightsEnum`` member (used when ``pretrained is True``);
    ``remap`` converts its key names to ``module``'s when they differ. Keys the backbone
    does not have (e.g. the classifier) are ignored; keys it has but the file lacks,
    or shapes that differ, are an error.
    """
    if pretrained is False or pretrained is None:
        return
    state = _read_local(pretrained) if isinstance(pretrained, str) else _download(weights)
    if remap is not None:
        state = remap(state)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        what = f"missing {missing[:3]}" if missing else f"shape mismatch at {wrong[:3]}"
        raise ConfigError(f"model.params.pretrained_backbone: weights do not fit the backbone ({what})")
    module.load_state_dict({k: state[k] for k in own})
    logger.info("loaded pretrained backbone weights (%s)", pretrained if isinstance(pretrained, str) else weights)


_RESNETS: dict[int, tuple[Callable[..., Any], Any]] = {}


def _resnet_table() -> dict[int, tuple[Callable[..., Any], Any]]:
    if not _RESNETS:
        from torchvision.models import resnet as tv

        _RESNETS.update(
            {
                18: (tv.resnet18, tv.ResNet18_Weights.IMAGENET1K_V1),
                34: (tv.resnet34, tv.ResNet34_Weights.IMAGENET1K_V1),
                50: (tv.resnet50, tv.ResNet50_Weights.IMAGENET1K_V1),
                101: (tv.resnet101, tv.ResNet101_Weights.IMAGENET1K_V1),
                152: (tv.resnet152, tv.ResNet152_Weights.IMAGENET1K_V1),
            }
        )
    return _RESNETS


class ResNetFeatures(nn.Module):
    """torchvision ResNet trunk returning ``{"stem", "layer1", …, "layer4"}`` features.

    ``output_stride`` 16 or 8 swaps the strides of layer4 (and layer3) for dilation,
    as DeepLab/PSPNet do (torchvision's ``replace_stride_with_dilation``).
    The classifier (``avgpool``/``fc``) is dropped.
    """

    STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, depth: int, output_stride: int = 32, pretrained_backbone: Pretrained = False) -> None:
        super().__init__()
        table = _resnet_table()
        if depth not in table:
            raise ConfigError(f"model.params.depth: ResNet-{depth} does not exist (choices: {sorted(table)})")
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"model.params.output_stride: must be 8, 16 or 32, got {output_stride}")
        build, weights = table[depth]
        dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
        net = build(weights=None, replace_stride_with_dilation=dilate)
        load_pretrained(net, pretrained_backbone, weights)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.channels = {
            "stem": 64,
            "layer1": 64 * expansion,
            "layer2": 128 * expansion,
            "layer3": 256 * expansion,
            "layer4": 512 * expansion,
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        for name in self.STAGES:
            x = getattr(self, name)(x)
            feats[name] = x
        return feats


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept trunk files saved from a whole model (``backbone.*`` keys) as well as bare trunks."""
    prefix = "backbone."
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


class DeepStemResNet(ResNetFeatures):
    """ResNet-v1c trunk: a 3×3 64-64-128 stem (stride 2, then the max pool), layer1 taking 128 channels.

    The "deep stem" ResNet the authors' releases of PSPNet, PSANet (hszhao/semseg ``model/resnet.py``,
    ``deep_base=True``) and UPerNet (CSAILVision/semantic-segmentation-pytorch ``models/resnet.py``) are
    trained on. The stem is laid out as ``stem.{0,1,3,4,6,7}`` (conv, BN, ReLU ×3, max-pool), the key
    layout of mmsegmentation's ResNetV1c; a local trunk file with these keys and shapes loads (bare or
    with ``backbone.`` keys). ``output_stride`` as :class:`ResNetFeatures` (8 for PSPNet/PSANet, which
    then reset every block's dilation, 32 for UPerNet). torchvision has no such weights:
    ``pretrained_backbone=True`` is an error.
    """

    def __init__(self, depth: int, pretrained_backbone: Pretrained = False, output_stride: int = 8) -> None:
        if pretrained_backbone is True:
            raise ConfigError(
                "model.params.pretrained_backbone: torchvision has no deep-stem (ResNet-v1c) weights; "
                "give a local file path or use the model without _deepstem (torchvision's 7×7 stem)"
            )
        if depth < 50:
            raise ConfigError(f"model.params.depth: the deep stem is built for Bottleneck ResNets (50, 101, 152), "
                              f"got {depth}")
        super().__init__(depth, output_stride=output_stride)
        self.stem = nn.Sequential(
            *ConvBNReLU(3, 64, 3, stride=2), *ConvBNReLU(64, 64, 3), *ConvBNReLU(64, 128, 3),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        first = self.layer1[0]
        first.conv1 = nn.Conv2d(128, first.conv1.out_channels, 1, bias=False)
        first.downsample[0] = nn.Conv2d(128, first.downsample[0].out_channels, 1, bias=False)
        self.channels["stem"] = 128
        for module in (*self.stem, first.conv1, first.downsample[0]):
            if isinstance(module, nn.Conv2d):  # torchvision's ResNet init for the replaced convs
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if pretrained_backbone:
            load_pretrained(self, pretrained_backbone, None, _strip_prefix)


def set_block_dilation(layer: nn.Sequential, rates: Sequence[int]) -> None:
    """Give the 3×3 conv of each residual block in ``layer`` its own dilation rate.

    Padding equals the rate, so the spatial size is unchanged. PSPNet sets every
    block of a stage to one rate; DUC-HDC cycles rates such as 1, 2, 5, 9.
    """
    for block, rate in zip(layer, rates, strict=True):
        block.conv2.dilation = (rate, rate)
        block.conv2.padding = (rate, rate)


def dilate_stages(backbone: nn.Module, rates: Mapping[str, int]) -> None:
    """One dilation rate for every block of each named stage (``{"layer3": 2, "layer4": 4}``: the
    uniform output-stride-8 trunk of PSPNet, PSANet, OCNet and DeepLab v2, where torchvision's
    ``replace_stride_with_dilation`` would give each stage's first block the previous rate)."""
    for name, rate in rates.items():
        layer = getattr(backbone, name)
        set_block_dilation(layer, [rate] * len(layer))
