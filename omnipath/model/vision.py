"""Vision towers and the paper's multi-scale feature fusion.

Every tower maps base-size tiles to a feature map: (T×3×b×b, normalized) → T×C×g_t×g_t.

Fusion at scale k (paper, "multi-scale feature fusion", no encoder retraining):
the image is resized to k·b, cut into k×k tiles of b×b, each tile is encoded, the tile maps
are put back by position into a (k·g_t)×(k·g_t) map, which is average-pooled (kernel k) back
to g_t×g_t. The maps of all scales are concatenated along channels.

The two towers' grids differ (SigLIP SO400M/14 @384: 27; UNI ViT-L/16 @224: 14). We resample
UNI's map bilinearly UP to SigLIP's grid before concatenation, because (1) SigLIP is the
tower LLaVA-1.5's LM consumes, so its 27×27 = 729 tokens keep the paper's token count and
every token keeps a SigLIP feature computed at its own position; (2) the finer grid is what
PGDFC ranks and maps to slide regions, so detail selection keeps 27×27 resolution; pooling
SigLIP down to 14×14 would throw away 3/4 of its spatial detail. Channel order of the fused
map: for tower in (SigLIP, UNI): for k in scale_factors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from omnipath.model.configuration import ModelInputError, OmniPathConfig, OmniPathUniConfig


class SiglipTower(nn.Module):
    """SigLIP vision transformer (transformers). Input normalized with mean = std = 0.5."""

    def __init__(self, config: SiglipVisionConfig, feature_layer: int = -1) -> None:
        super().__init__()
        self.model = SiglipVisionModel(config)
        self.feature_layer = feature_layer
        self.base_size = config.image_size
        self.grid = config.image_size // config.patch_size
        self.channels = config.hidden_size
        self.mean = (0.5, 0.5, 0.5)
        self.std = (0.5, 0.5, 0.5)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """T×3×b×b (normalized) → T×C×g×g."""
        want_hidden = self.feature_layer != -1
        out = self.model(pixel_values=tiles, output_hidden_states=want_hidden)
        tokens = out.hidden_states[self.feature_layer] if want_hidden else out.last_hidden_state
        return _tokens_to_map(tokens, self.grid)


class UniTower(nn.Module):
    """UNI: a timm ViT created with `init_values` (LayerScale) and a dynamic image size."""

    def __init__(self, config: OmniPathUniConfig) -> None:
        super().__init__()
        import timm  # heavy import, kept out of module import time

        self.model = timm.create_model(
            config.timm_model_name,
            pretrained=False,
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            init_values=config.init_values,
            dynamic_img_size=config.dynamic_img_size,
            num_classes=0,
        )
        self.base_size = config.image_size
        self.grid = config.image_size // config.patch_size
        self.channels = config.embed_dim
        self.mean = tuple(config.mean)
        self.std = tuple(config.std)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """T×3×b×b (normalized) → T×C×g×g (patch tokens after the final norm; no CLS)."""
        tokens = self.model.forward_features(tiles)[:, self.model.num_prefix_tokens :]
        return _tokens_to_map(tokens, self.grid)


def _tokens_to_map(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """T×(g·g)×C (row-major) → T×C×g×g."""
    t, n, c = tokens.shape
    if n != grid * grid:
        raise ModelInputError(f"A vision tower returned {n} tokens; expected {grid}×{grid}.")
    return tokens.transpose(1, 2).reshape(t, c, grid, grid)


def normalize(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """B×3×H×W in [0,1] → per-channel normalized (constants made on the fly: no buffers)."""
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - m) / s


def resize_square(images: torch.Tensor, side: int) -> torch.Tensor:
    """B×3×H×W → B×3×side×side (bilinear, antialiased when shrinking; a no-op at that size)."""
    if images.shape[-2:] == (side, side):
        return images
    shrinking = images.shape[-1] > side or images.shape[-2] > side
    return F.interpolate(
        images, size=(side, side), mode="bilinear", align_corners=False, antialias=shrinking
    )


def encode_at_scale(tower: nn.Module, images: torch.Tensor, k: int) -> torch.Tensor:
    """One tower at scale k: B×3×H×W in [0,1] → B×C×g×g (tile, encode, re-place, pool).

    `tower` needs `base_size`, `grid`, `mean`, `std` and maps T×3×b×b → T×C×g×g.
    """
    b, g = tower.base_size, tower.grid
    batch = images.shape[0]
    # Resize and normalize in float32 (antialiased resizing has no bf16 CPU kernel), then
    # hand the tower its own dtype.
    x = normalize(resize_square(images.float(), k * b), tower.mean, tower.std)
    anchor = next(tower.parameters())
    x = x.to(device=anchor.device, dtype=anchor.dtype)
    # B×3×(k·b)×(k·b) → (B·k·k)×3×b×b, tiles in row-major order (tile row, tile col).
    tiles = x.reshape(batch, 3, k, b, k, b).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, b, b)
    feats = tower(tiles)  # (B·k·k)×C×g×g
    c = feats.shape[1]
    # Put each tile's map back at its position: B×C×(k·g)×(k·g).
    placed = (
        feats.reshape(batch, k, k, c, g, g)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(batch, c, k * g, k * g)
    )
    return F.avg_pool2d(placed, kernel_size=k) if k > 1 else placed


class MultiScaleVision(nn.Module):
    """Both towers at every scale, fused to one map: B×3×H×W in [0,1] → B×C_v×g×g.

    g is SigLIP's grid; C_v = len(scale_factors) × (C_siglip + C_uni).
    """

    def __init__(self, config: OmniPathConfig) -> None:
        super().__init__()
        self.siglip = SiglipTower(config.vision_config, config.vision_feature_layer)
        self.uni = UniTower(config.uni_config)
        self.scale_factors = [int(k) for k in config.scale_factors]
        self.grid = self.siglip.grid
        self.channels = len(self.scale_factors) * (self.siglip.channels + self.uni.channels)

    def towers(self) -> list[nn.Module]:
        return [self.siglip, self.uni]

    def forward(self, images: torch.Tensor, encode_scales: list[int] | None = None) -> torch.Tensor:
        """B×3×H×W in [0,1] → B×C_v×g×g, the channel layout always that of `scale_factors`.

        encode_scales: the scales actually encoded (default: all of `scale_factors`). A slot
        of a scale not encoded holds the map of the nearest encoded scale (the smaller one on
        a tie). Detail patches use this (OmniPathPgdfcConfig.detail_scale_factors): a patch
        read at the detail magnification already IS the fine view that the larger scales
        give the thumbnail, so encoding it again magnified only interpolates its pixels.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ModelInputError(f"Images must be B×3×H×W, got shape {tuple(images.shape)}.")
        scales = self.scale_factors if encode_scales is None else [int(k) for k in encode_scales]
        if not scales or any(k < 1 for k in scales):
            raise ModelInputError(f"Scales to encode must be positive integers, got {scales}.")
        # Towers may sit on different devices (device_map="auto"): gather on SigLIP's.
        device = next(self.siglip.parameters()).device
        maps = []
        for tower in self.towers():
            encoded: dict[int, torch.Tensor] = {}
            for k in sorted(set(scales)):
                fmap = encode_at_scale(tower, images, k)
                if fmap.shape[-1] != self.grid:
                    fmap = F.interpolate(
                        fmap, size=(self.grid, self.grid), mode="bilinear", align_corners=False
                    )
                encoded[k] = fmap.to(device)
            for k in self.scale_factors:
                maps.append(encoded[min(encoded, key=lambda e, k=k: (abs(e - k), e))])
        return torch.cat(maps, dim=1)
