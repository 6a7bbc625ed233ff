"""Tiny LLaVA parts shared by the LLaVA tests (test_llava_adapter, test_original_llava)."""

from __future__ import annotations

IMAGE_SIDE = 32
PATCH = 8
GRID = IMAGE_SIDE // PATCH  # a 4×4 grid of image tokens
TOWER_WIDTH = 32


def clip_vision_config():
    """A CLIP vision tower of 3 layers, 32 wide, on 32 px images in 8 px patches."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=TOWER_WIDTH,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIDE,
        patch_size=PATCH,
        projection_dim=16,
    )
