"""Models and slides the engine tests share: `tiny`, a tiny stock LLaVA through the adapter,
and a small H&E-like slide with tissue on its left."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw

SLIDE_W, SLIDE_H = 1600, 1000
TISSUE_RIGHT = 720  # tissue only left of this level-0 x; the rest is white background


def tiny_model() -> tuple:
    """(model, tokenizer): the test OmniPath, seeded."""
    from omnipath.model import OmniPathForConditionalGeneration, build_tiny_tokenizer, tiny_config

    torch.manual_seed(0)
    return OmniPathForConditionalGeneration(tiny_config()).eval(), build_tiny_tokenizer()


def tiny_llava_adapter():
    """A tiny stock LlavaForConditionalGeneration (CLIP 64 px, Llama 2 layers) in LlavaAdapter;
    it shares `tiny`'s tokenizer (same vocabulary and image token id)."""
    from transformers import (
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from omnipath.model import tiny_config
    from omnipath.model.configuration import TINY_IMAGE_ID
    from omnipath.model.llava_adapter import LlavaAdapter

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=64,
        patch_size=8,
        projection_dim=16,
    )
    text = tiny_config().text_config  # tiny's Llama: its tokenizer fits
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=TINY_IMAGE_ID,
            image_seq_length=64,
        )
    ).eval()
    return LlavaAdapter(llava)


def write_slide(path, *, tissue_right: int = TISSUE_RIGHT) -> None:
    """A small H&E-like image: tissue (pink with purple nuclei) left of `tissue_right`."""
    rng = np.random.default_rng(0)
    image = Image.new("RGB", (SLIDE_W, SLIDE_H), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if tissue_right > 0:
        draw.rectangle((0, 0, tissue_right - 1, SLIDE_H - 1), fill=(225, 140, 185))
        for _ in range(1500):
            x, y = rng.integers(0, tissue_right - 6), rng.integers(0, SLIDE_H - 6)
            draw.ellipse((x, y, x + 5, y + 5), fill=(110, 50, 140))
    image.save(path)


def opened_slide(tmp_path_factory) -> Iterator:
    """The small slide (`write_slide`), opened through the slide layer (for a fixture)."""
    from omnipath.slide import open_slide

    path = tmp_path_factory.mktemp("slides") / "slide.png"
    write_slide(path)
    with open_slide(path) as opened:
        yield opened


def script_the_head(engine, script: list[int], monkeypatch) -> None:
    """The LM head's logits favour the next token of `script` at each generation step (one
    head call per step: generate keeps only the last position's logits)."""
    head = engine.model.language_model.get_output_embeddings()
    original, steps = head.forward, iter(script)

    def scripted(hidden):
        logits = original(hidden)
        forced = torch.full_like(logits[:, -1], -1e4)
        forced[:, next(steps)] = 1e4
        return torch.cat([logits[:, :-1], forced[:, None]], dim=1)

    monkeypatch.setattr(head, "forward", scripted)
