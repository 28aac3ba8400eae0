"""Layers shared by more than one model family."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """Conv → BatchNorm → ReLU, the unit most segmentation heads are built from."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bn_eps: float = 1e-5,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=bn_eps),
            nn.ReLU(inplace=True),
        )



def conv_head(in_channels: int, mid_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """3×3 conv + BN + ReLU → Dropout2d → 1×1 classifier: the main and auxiliary heads of PSPNet
    (Zhao et al. 2017, hszhao/semseg ``cls``/``aux``) and PSANet (same release), keys ``0.*`` / ``3.*``."""
    return nn.Sequential(
        ConvBNReLU(in_channels, mid_channels, 3), nn.Dropout2d(dropout), nn.Conv2d(mid_channels, num_classes, 1)
    )


class C(nn.Module):
    """A bias-free conv padded to keep the size at stride 1 (``groups=n_in``: channel-wise), held as ``.conv``:
    the ``C``/``CDilated`` of the ESPNet and CGNet releases (sacmehta/ESPNet, wutianyiRosun/CGNet), whose keys
    their official weights use."""

    def __init__(self, n_in: int, n_out: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        pad = (k - 1) // 2 * dilation
        self.conv = nn.Conv2d(n_in, n_out, k, stride, pad, dilation, groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class BNPReLU(nn.Module):
    """BatchNorm (eps 1e-3, as both releases) + per-channel PReLU, keys ``bn``/``act`` (ESPNet ``BR``, CGNet ``BNPReLU``)."""

    def __init__(self, n: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(n, eps=eps)
        self.act = nn.PReLU(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class ConvBNPReLU(BNPReLU):
    """Bias-free conv + BN + PReLU, keys ``conv``/``bn``/``act`` (ESPNet ``CBR``, CGNet ``ConvBNPReLU``)."""

    def __init__(self, n_in: int, n_out: int, k: int, stride: int = 1, eps: float = 1e-3) -> None:
        super().__init__(n_out, eps)
        self.conv = nn.Conv2d(n_in, n_out, k, stride, (k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.conv(x))


class PooledImage(nn.Module):
    """The image average-pooled ``times`` times by 3×3/2 (pad 1): 1/2, 1/4, … (⌈H/2⌉ per step, as strided convs).

    ESPNet (``InputProjectionA``) and CGNet (``InputInjection``) concatenate it to their features to re-inject
    the image at lower resolutions; it has no parameters, so state dicts do not see it."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool2d(3, stride=2, padding=1) for _ in range(times))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for pool in self.pool:
            x = pool(x)
        return x


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """Weights that make a ConvTranspose2d a bilinear upsampler (FCN, Long et al. 2015, §3.3).

    Channel ``c`` maps to channel ``c`` only; other pairs are zero.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    grid = torch.arange(kernel_size, dtype=torch.float32)
    filt1d = 1 - (grid - center).abs() / factor
    filt = filt1d[:, None] * filt1d[None, :]
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    for c in range(min(in_channels, out_channels)):
        weight[c, c] = filt
    return weight


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of logits/features to ``size`` (H, W); a no-op when already there.

    ``align_corners`` is a per-family setting (``model.params.align_corners``): official
    weights only reproduce the official logits with the interpolation they were trained with.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
