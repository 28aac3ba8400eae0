"""U-Net tests: Fig. 1's layers and count, the valid tile arithmetic (572 → 388), overlap-tile mirroring and its
alignment, padded vs unpadded at odd sizes, the copy-and-crop skips, dropout and the paper's initialisation.

Full-width nets are built on the meta device; real computation uses narrow nets (``base_channels`` 2–8).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.models.unet import VALID_BORDER, UNet, center_crop, mirror_pad, valid_output_size, valid_tile_size
from semseg.registry import MODELS
from tests.fixtures.training import fit


def _meta(num_classes: int = 2, **kwargs) -> UNet:
    with torch.device("meta"):
        return MODELS.build("unet", num_classes=num_classes, **kwargs)


def _narrow(padding: bool, base: int = 2, num_classes: int = 3, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return MODELS.build("unet", num_classes=num_classes, padding=padding, base_channels=base).eval()


def test_layers_follow_fig_1_and_the_count_is_pinned() -> None:
    model = _meta()
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 23  # "In total the network has 23 convolutional layers"
    down = [(c.in_channels, c.out_channels) for block in model.down for c in block if isinstance(c, nn.Conv2d)]
    assert down == [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512),
                    (512, 1024), (1024, 1024)]
    ups = [(u.up.in_channels, u.up.out_channels, u.up.kernel_size, u.up.stride) for u in model.up]
    assert ups == [(1024, 512, (2, 2), (2, 2)), (512, 256, (2, 2), (2, 2)), (256, 128, (2, 2), (2, 2)),
                   (128, 64, (2, 2), (2, 2))]  # "a 2x2 convolution ('up-convolution') that halves the channels"
    assert [u.conv[0].in_channels for u in model.up] == [1024, 512, 256, 128]  # concat doubles them again
    assert model.classifier.kernel_size == (1, 1) and model.classifier.in_channels == 64
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    conv3 = sum(9 * i * o + o for i, o in down + [(1024, 512), (512, 512), (512, 256), (256, 256), (256, 128),
                                                   (128, 128), (128, 64), (64, 64)])
    upconv = sum(4 * i * o + o for i, o, _, _ in ups)
    params = sum(p.numel() for p in model.parameters())
    assert (conv3, upconv, params) == (28_245_440, 2_786_240, 31_031_810) and params == conv3 + upconv + 130
    assert params - 2 * 9 * 64 == 31_030_658  # Fig. 1's one-channel input
    assert sum(p.numel() for p in _meta(11).parameters()) - params == 9 * 65  # 65 per extra class


def test_valid_tile_arithmetic() -> None:
    assert valid_output_size(572) == 388  # the paper's tile (Fig. 1, Fig. 2)
    assert valid_output_size(188) == 4 and valid_tile_size(4) == 188 and valid_tile_size(1) == 188
    assert valid_tile_size(388) == 572 and valid_tile_size(360) == 556 and valid_tile_size(480) == 668
    for bad in (187, 189, 572 - 8, 60 + 16 * 7):
        with pytest.raises(ConfigError, match="16k \\+ 60"):
            valid_output_size(bad)
    for side in range(1, 700, 13):  # the smallest tile covering the side: the next smaller one would not
        tile = valid_tile_size(side)
        assert valid_output_size(tile) >= side and (tile == 188 or valid_output_size(tile - 16) < side)
    assert VALID_BORDER == (572 - 388) // 2 == 92


def test_valid_net_on_the_papers_tile_gives_fig_1_sizes() -> None:
    model = _narrow(padding=False)
    sides = []
    for block in [*model.down, *model.up]:
        block.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
    with torch.no_grad():
        out = model.features(torch.randn(1, 3, 572, 572))
    assert out.shape[-2:] == (388, 388)
    assert sides == [568, 280, 136, 64, 28, 52, 100, 196, 388]  # Fig. 1: after each level's two convs


@pytest.mark.parametrize("padding", [True, False])
@pytest.mark.parametrize("size", [(45, 61), (1, 1), (17, 300), (64, 64)])
def test_padded_and_valid_both_give_the_input_size(padding: bool, size: tuple[int, int]) -> None:
    model = _narrow(padding)
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))["out"]
    assert out.shape == (2, 3, *size) and torch.isfinite(out).all()


def test_padded_tiles_to_multiples_of_16_and_valid_mirrors_92_pixels() -> None:
    padded, valid = _meta(padding=True), _meta(padding=False)
    x = torch.randn(1, 3, 45, 61)
    assert padded.tile(torch.empty(1, 3, 64, 48)).shape[-2:] == (64, 48)  # a multiple of 16: untouched
    assert padded.tile(x).shape[-2:] == (48, 64)
    tile = valid.tile(x)
    assert tile.shape[-2:] == (valid_tile_size(45), valid_tile_size(61)) == (236, 252)
    b = VALID_BORDER
    torch.testing.assert_close(tile[..., b : b + 45, b : b + 61], x, rtol=0, atol=0)  # the image, at (92, 92)
    for i in range(1, 45):  # above it, its rows mirrored about row 0 (44 at a time, then mirrored again)
        torch.testing.assert_close(tile[..., b - i, b : b + 61], x[..., i, :], rtol=0, atol=0)
    torch.testing.assert_close(tile[..., b, b - 1], x[..., 0, 1], rtol=0, atol=0)
    assert padded.tile(x)[..., :45, :61].equal(x) and padded.tile(x)[..., 45, :61].equal(x[..., 43, :])


def test_mirror_pad_reflects_wider_than_the_image_like_numpy() -> None:
    import numpy as np

    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    out = mirror_pad(x, 7, 5, 9, 2)
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (7, 5), (9, 2)), mode="reflect")
    assert out.shape == (1, 1, 15, 15) and np.array_equal(out.numpy(), ref)
    assert mirror_pad(torch.ones(1, 1, 1, 5), 2, 2, 1, 1).shape == (1, 1, 5, 7)  # one row: replicated


def test_valid_output_is_aligned_with_the_image() -> None:
    """Output pixel (i, j) is the valid net's prediction for input pixel (i, j): away from the mirrored
    borders, predicting a 388×388 crop equals the valid output of the 572×572 tile it sits in."""
    model = _narrow(padding=False, base=4, seed=1)
    big = torch.randn(1, 3, 572, 572)
    b = VALID_BORDER
    with torch.no_grad():
        ref = model.classifier(model.features(big))  # covers big[92:480, 92:480]
        out = model(big[..., b : b + 388, b : b + 388])["out"]
    inner = slice(112, 276)  # the region whose context (92 px + pool slack) is all real pixels in both
    torch.testing.assert_close(out[..., inner, inner], ref[..., inner, inner], rtol=1e-5, atol=1e-5)
    assert (out[..., :8, :8] - ref[..., :8, :8]).abs().max() > 1e-4  # at the border, mirrored context instead


def test_skips_are_centre_cropped_and_concatenated_after_the_upsampled_maps() -> None:
    model = _narrow(padding=False, base=4)
    up = model.up[0]  # deepest: the 64×64 skip (Fig. 1) cropped to the 56×56 up-sampled map
    seen = {}
    up.up.register_forward_hook(lambda m, i, o: seen.update(up=o))
    up.conv.register_forward_pre_hook(lambda m, i: seen.update(cat=i[0]))
    model.down[3].register_forward_hook(lambda m, i, o: seen.update(skip=o))
    with torch.no_grad():
        model.features(torch.randn(1, 3, 572, 572))
    c = up.up.out_channels
    assert seen["skip"].shape[-1] == 64 and seen["up"].shape[-1] == 56 and seen["cat"].shape[1] == 2 * c
    torch.testing.assert_close(seen["cat"][:, :c], F.relu(seen["up"]))  # a ReLU after the up-conv, as the release
    torch.testing.assert_close(seen["cat"][:, c:], seen["skip"][..., 4:60, 4:60])  # 4 px off each side
    assert center_crop(torch.arange(25).reshape(5, 5), (3, 1)).flatten().tolist() == [7, 12, 17]


def test_padded_skips_need_no_crop() -> None:
    model = _narrow(padding=True, base=4)
    shapes = []
    for up in model.up:
        up.conv.register_forward_pre_hook(lambda m, i: shapes.append(i[0].shape[-2:]))
    with torch.no_grad():
        model.features(torch.randn(1, 3, 48, 64))
    assert shapes == [(6, 8), (12, 16), (24, 32), (48, 64)]


def test_dropout_ends_the_contracting_path() -> None:
    model = _narrow(padding=True, base=4)
    assert sorted(model.drop) == ["3", "4"] and all(d.p == 0.5 for d in model.drop.values())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x)["out"], model(x)["out"])  # eval: deterministic
        model.train()
        torch.manual_seed(1)
        first = model(x)["out"]
        torch.manual_seed(2)
        assert not torch.allclose(first, model(x)["out"])
    with pytest.raises(ConfigError, match="model.params.dropout: 1.0 is not a probability"):
        MODELS.build("unet", num_classes=2, dropout=1.0)
    with pytest.raises(ConfigError, match="model.params.base_channels"):
        MODELS.build("unet", num_classes=2, base_channels=0)


def test_init_is_the_papers_gaussian() -> None:
    """§3: std sqrt(2/N), N = incoming nodes (9·C_in for a 3×3 conv, C_in for a 2×2 stride-2 up-conv)."""
    model = _narrow(padding=True, base=16)
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            n = m.in_channels * (1 if isinstance(m, nn.ConvTranspose2d) else m.kernel_size[0] * m.kernel_size[1])
            if m.weight.numel() >= 400:  # enough draws for the sample std to be within a few %
                assert abs(m.weight.std().item() / (2 / n) ** 0.5 - 1) < 0.1, name
            assert not m.bias.any(), name


def test_batch_norm_is_an_option_not_the_default() -> None:
    model = _meta(batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 18  # one after each 3×3 conv
    assert all(c.bias is None for c in model.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3))
    assert model.classifier.bias is not None


def test_a_few_sgd_steps_fit_a_batch() -> None:
    model = _narrow(padding=True, base=8).train()
    x = torch.randn(2, 3, 32, 32)
    y = torch.randint(0, 3, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = fit(lambda: F.cross_entropy(model(x)["out"], y), opt, 25)
    assert losses[-1] < 0.8 * losses[0], losses
