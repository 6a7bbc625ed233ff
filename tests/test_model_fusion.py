"""Multi-scale fusion: tiling correctness, token counts independent of the scale factors, and
the two towers resampled to one grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omnipath.model import ModelInputError, OmniPathForConditionalGeneration, tiny_config
from omnipath.model.vision import encode_at_scale, normalize, resize_square


class _TileStatsTower(nn.Module):
    """A deterministic stand-in tower: per patch, the patch mean times the tile's mean square.

    The second factor depends on the whole tile, so a tile cut or placed wrongly changes the
    result (a purely local tower could not tell tiling from a whole-image pass).
    """

    def __init__(self, base_size: int, grid: int) -> None:
        super().__init__()
        self.base_size, self.grid = base_size, grid
        self.mean, self.std = (0.5, 0.4, 0.3), (0.25, 0.5, 1.0)
        self.anchor = nn.Parameter(torch.ones(()))  # gives the tower a dtype

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        assert tiles.shape[-2:] == (self.base_size, self.base_size)
        per_patch = F.avg_pool2d(tiles, self.base_size // self.grid)
        per_tile = tiles.pow(2).mean(dim=(1, 2, 3), keepdim=True)
        return per_patch * per_tile * self.anchor


def _by_hand(tower: _TileStatsTower, images: torch.Tensor, k: int) -> torch.Tensor:
    """The paper's recipe written out with explicit loops."""
    b, g = tower.base_size, tower.grid
    x = normalize(resize_square(images, k * b), tower.mean, tower.std)
    canvas = torch.zeros(images.shape[0], 3, k * g, k * g)
    for row in range(k):
        for col in range(k):
            tile = x[:, :, row * b : (row + 1) * b, col * b : (col + 1) * b]
            canvas[:, :, row * g : (row + 1) * g, col * g : (col + 1) * g] = tower(tile)
    pooled = torch.zeros(images.shape[0], 3, g, g)
    for r in range(g):
        for c in range(g):
            pooled[:, :, r, c] = canvas[:, :, r * k : (r + 1) * k, c * k : (c + 1) * k].mean((2, 3))
    return pooled


@pytest.mark.parametrize("k", [1, 2, 3])
def test_tiling_matches_hand_computed_map(k):
    tower = _TileStatsTower(base_size=16, grid=4)
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(k))
    with torch.no_grad():
        fused = encode_at_scale(tower, images, k)
        expected = _by_hand(tower, images, k)
    assert fused.shape == (2, 3, 4, 4)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)


def test_tiling_sees_tile_order():
    """Swapping two tiles of the input changes the fused map at their cells only."""
    tower = _TileStatsTower(base_size=16, grid=4)
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    swapped = images.clone()
    swapped[..., :16, :16], swapped[..., 16:, 16:] = images[..., 16:, 16:], images[..., :16, :16]
    with torch.no_grad():
        a = encode_at_scale(tower, images, 2)
        b = encode_at_scale(tower, swapped, 2)
    torch.testing.assert_close(a[..., :2, :2], b[..., 2:, 2:])
    torch.testing.assert_close(a[..., :2, 2:], b[..., :2, 2:])
    assert not torch.allclose(a[..., :2, :2], b[..., :2, :2])


@pytest.mark.parametrize("scales", [[1], [2], [1, 2], [1, 2, 3]])
def test_token_count_is_independent_of_scale_factors(scales):
    config = tiny_config()
    config.scale_factors = scales
    torch.manual_seed(0)
    model = OmniPathForConditionalGeneration(config).eval()
    per_scale = config.vision_config.hidden_size + config.uni_config.embed_dim
    for side in (64, 100, model.thumb_side):
        images = torch.rand(2, 3, side, side)
        with torch.no_grad():
            tokens, feature_map = model.encode_images(images)
        assert tokens.shape == (2, 64, config.text_config.hidden_size)
        assert model.num_image_tokens == 64 and model.grid == 8
        assert feature_map.shape == (2, len(scales) * per_scale, 8, 8)
    assert model.thumb_side == max(scales) * config.vision_config.image_size


def test_fused_map_is_both_towers_at_every_scale_on_siglips_grid():
    torch.manual_seed(0)
    model = OmniPathForConditionalGeneration(tiny_config()).eval()
    vision = model.vision
    images = torch.rand(1, 3, model.thumb_side, model.thumb_side)
    with torch.no_grad():
        fused = vision(images)
        blocks = []
        for tower in (vision.siglip, vision.uni):
            for k in model.config.scale_factors:
                blocks.append(encode_at_scale(tower, images, k))
    assert blocks[0].shape[-1] == 8  # SigLIP: 64 px / patch 8
    assert blocks[2].shape[-1] == 4  # UNI: 32 px / patch 8, resampled up to 8
    upsampled = [
        b if b.shape[-1] == 8 else F.interpolate(b, size=(8, 8), mode="bilinear") for b in blocks
    ]
    torch.testing.assert_close(fused, torch.cat(upsampled, dim=1))


def test_images_with_wrong_layout_are_refused():
    torch.manual_seed(0)
    model = OmniPathForConditionalGeneration(tiny_config())
    with pytest.raises(ModelInputError, match="B×3×H×W"):
        model.encode_images(torch.rand(3, 64, 64))
