"""ESPNetv2: EESP units (group point-wise + depth-wise dilated convs) and a light pyramid-pooling decoder.

Mehta, Rastegari, Shapiro and Hajishirzi, "ESPNetv2: A Light-weight, Power Efficient, and General
Purpose Convolutional Neural Network", CVPR 2019 (arXiv:1811.11431). Layer sizes, the segmentation
decoder and the released counts follow the authors' PyTorch code, sacmehta/EdgeNets
(``model/classification/espnetv2.py`` + ``espnetv2_config.py``, ``nn_layers/eesp.py``,
``model/segmentation/espnetv2.py``, ``nn_layers/efficient_pyramid_pool.py``, ``efficient_pt.py``).

EESP unit (the paper's core block; sizes as ``nn_layers/eesp.py``): *reduce* with a group 1×1 conv (K = 4 groups) to N/K channels, *split*
into K depth-wise 3×3 convs whose dilations grow 1, 2, 3, 4 (capped by a per-level receptive-field
limit, the capped ones falling back to dilation 1), fuse them hierarchically (HFF: each branch plus the
running sum of the ones before, against gridding), concat → BN + PReLU → group 1×1 conv (K groups) +
BN, then residual + PReLU. The strided unit runs the depth-wise convs at stride 2, concats
its output with a 3×3/2 average pool of its input, and adds the input-image reinforcement: the image,
average-pooled to the same size, through 3×3 CBR (3→3) + 1×1 CB (3→out), then PReLU.

Encoder = the ImageNet ESPNetv2 without level 5 (EdgeNets deletes it for segmentation): level 1
3×3/2 CBR (1/2), strided EESP (1/4), strided EESP + 3 EESP (1/8), strided EESP + 7 EESP (1/16).
Decoder (EdgeNets): an efficient pyramid pooling (EPP) module on the 1/16 features, then three times
×2 bilinear up + an efficient point-wise fusion of the skip (3×3 group conv gated by a channel-wise
sigmoid of its global average) → BN + PReLU → EPP; channels 64, 48, 32, then the classes at 1/2, and a
bilinear up to the input (``align_corners=True`` throughout, as the authors' code).

Module names follow EdgeNets (``backbone`` is their ``base_net``), so their ImageNet file loads as
``pretrained_backbone`` without renaming and their segmentation files after that one prefix rename.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.models._backbones import Pretrained, load_pretrained
from semseg.models._blocks import resize_to
from semseg.registry import MODELS

# bf16 autocast + channels_last over fp32/NCHW, train step on CPU: what train.amp=auto reads
# (semseg/precision.py; measured by bench/models.py --fast-path-only, doc/benchmarks.md)
CPU_BF16_SPEEDUP: float | None = 0.96  # slower than fp32 (FAST_ENOUGH 1.10): fp32 on CPU
# Output channels of levels 1-4 per width scale s (EdgeNets espnetv2_config.sc_ch_dict; level 5 is not used)
CHANNELS = {0.5: (16, 32, 64, 128), 1.0: (32, 64, 128, 256), 1.5: (32, 96, 192, 384), 2.0: (32, 128, 256, 512)}
REPEATS = (3, 7)  # EESP units after the strided one at levels 3 and 4 (espnetv2_config.rep_layers)
RECEPTIVE_LIMIT = (13, 11, 9, 7)  # largest effective kernel per level, smaller as the maps shrink (recept_limit)
BRANCHES = 4  # K, the EESP's parallel branches and its 1×1 convs' groups (espnetv2_config.branches)
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)  # EPP's branch scales (efficient_pyramid_pool.py)
PYRAMID_MIN_SIZE = 5  # EPP never pools a side below 5 pixels
DECODER_PLANES = 16  # EdgeNets dec_feat_dict for Cityscapes/VOC: decoder widths 4×, 3×, 2× this
IMAGE_CHANNELS = 3  # the input reinforcement's width (config_inp_reinf)


def _init(module: nn.Module) -> None:
    """EdgeNets init_params: Kaiming-normal (fan out) convs with zero bias, BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv(n_in: int, n_out: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, k, stride, (k - 1) // 2 * dilation, dilation, groups, bias=False)


class CB(nn.Module):
    """Conv + BN (encoder layout: ``conv``, ``bn``), as EdgeNets ``espnet_utils``."""

    def __init__(self, n_in: int, n_out: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = _conv(n_in, n_out, k, stride, dilation, groups)
        self.bn = nn.BatchNorm2d(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class CBR(CB):
    """Conv + BN + per-channel PReLU (encoder layout: ``conv``, ``bn``, ``act``)."""

    def __init__(self, n_in: int, n_out: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(n_in, n_out, k, stride, 1, groups)
        self.act = nn.PReLU(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class BR(nn.Module):
    """BN + PReLU (encoder layout: ``bn``, ``act``)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(n)
        self.act = nn.PReLU(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class SeqCBR(nn.Module):
    """Decoder CBR: the same layers in EdgeNets ``cnn_utils`` layout (``cbr.0/1/2``)."""

    def __init__(self, n_in: int, n_out: int, k: int, groups: int = 1) -> None:
        super().__init__()
        self.cbr = nn.Sequential(_conv(n_in, n_out, k, groups=groups), nn.BatchNorm2d(n_out), nn.PReLU(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class SeqBR(nn.Module):
    """Decoder BN + PReLU in EdgeNets ``cnn_utils`` layout (``br.0/1``)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(n), nn.PReLU(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


def kernel_dilations(k: int, r_lim: int) -> list[int]:
    """Dilations of the K depth-wise 3×3 convs: effective sizes 3, 5, 7, … (d = 1, 2, 3, …); a size over
    ``r_lim`` falls back to 3 (d = 1); sorted so the HFF sums run from the smallest field up."""
    sizes = sorted(3 + 2 * i if 3 + 2 * i <= r_lim else 3 for i in range(k))
    return [(size - 1) // 2 for size in sizes]


class DepthwiseDilated(nn.Module):
    """One EESP branch: a depth-wise 3×3 conv at dilation ``d`` (EdgeNets ``CDilated``: ``spp_dw.i.conv``)."""

    def __init__(self, n: int, stride: int, d: int) -> None:
        super().__init__()
        self.conv = _conv(n, n, 3, stride, d, groups=n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class EESP(nn.Module):
    """Reduce (group 1×1) → K depth-wise dilated 3×3 → HFF → concat → BR → group 1×1 + BN (→ + input, PReLU).

    At stride 2 the unit returns the expanded maps before any residual or activation: the
    :class:`DownSampler` concatenates them with its average pool and applies the PReLU. (The official
    strided unit also creates a ``module_act`` PReLU it never calls; we leave that dead layer out.)
    """

    def __init__(self, n_in: int, n_out: int, stride: int = 1, k: int = BRANCHES, r_lim: int = 7) -> None:
        super().__init__()
        n = n_out // k
        self.stride = stride
        self.proj_1x1 = CBR(n_in, n, 1, groups=k)
        self.spp_dw = nn.ModuleList(DepthwiseDilated(n, stride, d) for d in kernel_dilations(k, r_lim))
        self.conv_1x1_exp = CB(n * k, n_out, 1, groups=k)
        self.br_after_cat = BR(n * k)
        if stride == 1:
            self.module_act = nn.PReLU(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        fused = [self.spp_dw[0](reduced)]
        for branch in list(self.spp_dw)[1:]:  # HFF: branch k + (branch 0 + … + branch k-1)
            fused.append(branch(reduced) + fused[-1])
        expanded = self.conv_1x1_exp(self.br_after_cat(torch.cat(fused, 1)))
        if self.stride == 2:
            return expanded
        return self.module_act(expanded + x)


class DownSampler(nn.Module):
    """Strided EESP (n_in → n_out − n_in) ‖ 3×3/2 avg pool (n_in), + the image reinforcement, → PReLU."""

    def __init__(self, n_in: int, n_out: int, r_lim: int) -> None:
        super().__init__()
        self.eesp = EESP(n_in, n_out - n_in, stride=2, r_lim=r_lim)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)
        self.inp_reinf = nn.Sequential(CBR(IMAGE_CHANNELS, IMAGE_CHANNELS, 3), CB(IMAGE_CHANNELS, n_out, 1))
        self.act = nn.PReLU(n_out)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.avg(x), self.eesp(x)], 1)
        return self.act(out + self.inp_reinf(image))


class EESPNetFeatures(nn.Module):
    """ESPNetv2 levels 1-4 → ``{"level1": 1/2, "level2": 1/4, "level3": 1/8, "level4": 1/16}``.

    Every stride-2 layer gives ⌈n/2⌉, so the image average-pooled k times (3×3/2, pad 1) is exactly
    the size of level k: the official code pools until the widths agree, which is the same thing
    here and works for any H, W (each pooled image is computed once and reused).
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        c1, c2, c3, c4 = CHANNELS[scale]
        self.channels = {"level1": c1, "level2": c2, "level3": c3, "level4": c4}
        self.level1 = CBR(3, c1, 3, stride=2)
        self.level2_0 = DownSampler(c1, c2, RECEPTIVE_LIMIT[0])
        self.level3_0 = DownSampler(c2, c3, RECEPTIVE_LIMIT[1])
        self.level3 = nn.ModuleList(EESP(c3, c3, r_lim=RECEPTIVE_LIMIT[2]) for _ in range(REPEATS[0]))
        self.level4_0 = DownSampler(c3, c4, RECEPTIVE_LIMIT[2])  # as the official code: level 3's limit (9)
        self.level4 = nn.ModuleList(EESP(c4, c4, r_lim=RECEPTIVE_LIMIT[3]) for _ in range(REPEATS[1]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        image = F.avg_pool2d(F.avg_pool2d(x, 3, 2, 1), 3, 2, 1)  # 1/4
        level1 = self.level1(x)
        level2 = self.level2_0(level1, image)
        image = F.avg_pool2d(image, 3, 2, 1)  # 1/8
        level3 = self.level3_0(level2, image)
        for unit in self.level3:
            level3 = unit(level3)
        image = F.avg_pool2d(image, 3, 2, 1)  # 1/16
        level4 = self.level4_0(level3, image)
        for unit in self.level4:
            level4 = unit(level4)
        return {"level1": level1, "level2": level2, "level3": level3, "level4": level4}


def pyramid_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """An EPP branch's map size: ⌈h·scale⌉ × ⌈w·scale⌉, never under 5 a side (efficient_pyramid_pool.py)."""
    return max(math.ceil(h * scale), PYRAMID_MIN_SIZE), max(math.ceil(w * scale), PYRAMID_MIN_SIZE)


class EfficientPyrPool(nn.Module):
    """EPP: 1×1 CBR to ``proj`` → 5 depth-wise 3×3 convs at scales 2, 1.5, 1, 0.5, 0.1 → concat → BR →
    channel shuffle (5 groups) → 3×3 group CBR (``proj`` groups) → 1×1 to ``n_out`` (→ BR; the last one
    has a bias and no BR). Scales above 1 upsample, convolve and pool back; below 1 pool (never under
    5 pixels a side), convolve and upsample."""

    def __init__(self, n_in: int, proj: int, n_out: int, last: bool = False) -> None:
        super().__init__()
        k = len(PYRAMID_SCALES)
        self.projection_layer = SeqCBR(n_in, proj, 1)
        self.stages = nn.ModuleList(_conv(proj, proj, 3, groups=proj) for _ in PYRAMID_SCALES)
        self.merge_layer = nn.Sequential(SeqBR(proj * k), nn.ChannelShuffle(k),
                                         SeqCBR(proj * k, proj, 3, groups=proj), nn.Conv2d(proj, n_out, 1, bias=last))
        self.last = last
        if not last:
            self.br = SeqBR(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        h, w = x.shape[-2:]
        branches = []
        for scale, conv in zip(PYRAMID_SCALES, self.stages):
            size = pyramid_size(h, w, scale)
            if scale > 1:
                branches.append(F.adaptive_avg_pool2d(conv(resize_to(x, size, True)), (h, w)))
            elif scale < 1:
                branches.append(resize_to(conv(F.adaptive_avg_pool2d(x, size)), (h, w), True))
            else:
                branches.append(conv(x))
        out = self.merge_layer(torch.cat(branches, 1))
        return out if self.last else self.br(out)


class EfficientPWConv(nn.Module):
    """Skip fusion: 3×3 CBR with gcd(in, out) groups, times sigmoid(1×1 conv of the global average)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(n_in, n_out, 1, bias=False), nn.Sigmoid())
        self.expansion_layer = SeqCBR(n_in, n_out, 3, groups=math.gcd(n_in, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


class ESPNetV2(nn.Module):
    """EESPNet levels 1-4 → EPP at 1/16 → 3 × (up, + fused skip, BR, EPP) → classes at 1/2 → up to H×W."""

    def __init__(self, num_classes: int, scale: float = 2.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError("model.params.num_classes: ESPNetv2's last pyramid pooling projects to "
                              f"num_classes // 2 channels and needs at least 2 classes, got {num_classes}")
        self.backbone = EESPNetFeatures(scale)
        c1, c2, c3, c4 = CHANNELS[scale]
        d1, d2, d3 = 4 * DECODER_PLANES, 3 * DECODER_PLANES, 2 * DECODER_PLANES
        proj = min(num_classes // 2, DECODER_PLANES)  # EdgeNets pyr_plane_proj
        self.bu_dec_l1 = EfficientPyrPool(c4, proj, d1)
        self.bu_dec_l2 = EfficientPyrPool(d1, proj, d2)
        self.bu_dec_l3 = EfficientPyrPool(d2, proj, d3)
        self.bu_dec_l4 = EfficientPyrPool(d3, proj, num_classes, last=True)
        self.merge_enc_dec_l2 = EfficientPWConv(c3, d1)
        self.merge_enc_dec_l3 = EfficientPWConv(c2, d2)
        self.merge_enc_dec_l4 = EfficientPWConv(c1, d3)
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(d1), nn.PReLU(d1))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(d2), nn.PReLU(d2))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(d3), nn.PReLU(d3))
        _init(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        out = self.bu_dec_l1(feats["level4"])
        steps = ((feats["level3"], self.merge_enc_dec_l2, self.bu_br_l2, self.bu_dec_l2),
                 (feats["level2"], self.merge_enc_dec_l3, self.bu_br_l3, self.bu_dec_l3),
                 (feats["level1"], self.merge_enc_dec_l4, self.bu_br_l4, self.bu_dec_l4))
        for skip, merge, br, decode in steps:
            # the official ×2 upsampling, as a resize to the skip's size: the same at even sizes, any size here
            out = decode(br(resize_to(out, skip.shape[-2:], True) + merge(skip)))
        return {"out": resize_to(out, x.shape[-2:], True)}


def _official_backbone_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EdgeNets files → our backbone keys: drop ``module.`` (DataParallel) and ``base_net.`` (their
    segmentation files) prefixes; BN step counters that a file lacks start at 0."""
    out = {}
    for key, value in state.items():
        out[key.removeprefix("module.").removeprefix("base_net.")] = value
    for key in [k for k in out if k.endswith(".running_mean")]:
        out.setdefault(key.replace(".running_mean", ".num_batches_tracked"), torch.tensor(0))
    return out


def _build(num_classes: int, scale: float, pretrained_backbone: Pretrained) -> ESPNetV2:
    if pretrained_backbone is True:
        raise ConfigError("model.params.pretrained_backbone: torchvision has no ImageNet ESPNetv2; give the path of "
                          f"the authors' file (EdgeNets espnetv2_s_{scale}_imagenet_224x224.pth) or false")
    model = ESPNetV2(num_classes, scale)
    load_pretrained(model.backbone, pretrained_backbone, None, remap=_official_backbone_keys)
    return model


# Parameters: the authors' released segmentation files (EdgeNets model/segmentation/model_zoo/espnetv2/
# espnetv2_s_<s>_city_1024x512.pth, 20 outputs: the 19 classes + a zero-weighted background), counted from
# the files; their model-zoo table rounds them to 0.08 / 0.23 / 0.47 / 0.79M. Ours has the same layers less
# the three dead PReLUs of the strided units (16+32+64 at s = 0.5, 32+64+128 at 1.0, 64+96+192 at 1.5,
# 96+128+256 at 2.0; tests/test_models_espnet_v2.py pins both). VOC's 21 classes add 11 (the last 1×1 + bias);
# the pyramids' width min(C // 2, 16) follows C too: 19 classes give 787,488 at s = 2.0, CamVid's 11 give 782,388.
# mIoU: the same table (Cityscapes val at 1024×512; s = 2.0 also on the test server, and on VOC 2012 test).
# paper_gflops: the table's FLOPs at 1024×512, which its counter gives in multiply-adds (utilities/utils.py
# compute_flops halves the 2-per-multiply-add count): compare with half of `python -m semseg.models`'s figure.
_CITYSCAPES = {"num_classes": 20}
_SOURCE = ("Mehta et al. 2019, arXiv:1811.11431; counted from sacmehta/EdgeNets "
           "model/segmentation/model_zoo/espnetv2/espnetv2_s_{s}_city_1024x512.pth (model-zoo table: {m}M)")
_MIOU = "sacmehta/EdgeNets model/segmentation/model_zoo/README.md, Cityscapes {split} at 1024×512"


@MODELS.register("espnet_v2", paper_params=789_242.0, paper_kwargs=_CITYSCAPES, output_stride=16,
                 source=_SOURCE.format(s="2.0", m="0.79"), paper_gflops=(2.699, (512, 1024)),
                 paper_cityscapes_miou=(66.2, _MIOU.format(split="test (66.4 val)")),
                 paper_voc_miou=(68.0, ("sacmehta/EdgeNets model-zoo README, VOC 2012 test at 384×384 "
                                        "(67.95; 67.01 val)")))
def espnet_v2(*, num_classes: int, pretrained_backbone: Pretrained = False) -> ESPNetV2:
    """ESPNetv2 at width scale s = 2.0, the paper's segmentation model; ``pretrained_backbone``: a local file."""
    return _build(num_classes, 2.0, pretrained_backbone)


@MODELS.register("espnet_v2_s1_5", paper_params=468_362.0, paper_kwargs=_CITYSCAPES, output_stride=16,
                 source=_SOURCE.format(s="1.5", m="0.47"), paper_gflops=(1.715, (512, 1024)),
                 paper_cityscapes_miou=(63.8, _MIOU.format(split="val")))
def espnet_v2_s1_5(*, num_classes: int, pretrained_backbone: Pretrained = False) -> ESPNetV2:
    """ESPNetv2 at s = 1.5."""
    return _build(num_classes, 1.5, pretrained_backbone)


@MODELS.register("espnet_v2_s1", paper_params=234_010.0, paper_kwargs=_CITYSCAPES, output_stride=16,
                 source=_SOURCE.format(s="1.0", m="0.23"), paper_gflops=(1.087, (512, 1024)),
                 paper_cityscapes_miou=(60.1, _MIOU.format(split="val")))
def espnet_v2_s1(*, num_classes: int, pretrained_backbone: Pretrained = False) -> ESPNetV2:
    """ESPNetv2 at s = 1.0."""
    return _build(num_classes, 1.0, pretrained_backbone)


@MODELS.register("espnet_v2_s0_5", paper_params=80_342.0, paper_kwargs=_CITYSCAPES, output_stride=16,
                 source=_SOURCE.format(s="0.5", m="0.08"), paper_gflops=(0.598, (512, 1024)),
                 paper_cityscapes_miou=(53.9, _MIOU.format(split="val")))
def espnet_v2_s0_5(*, num_classes: int, pretrained_backbone: Pretrained = False) -> ESPNetV2:
    """ESPNetv2 at s = 0.5."""
    return _build(num_classes, 0.5, pretrained_backbone)
