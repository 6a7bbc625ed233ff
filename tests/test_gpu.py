"""The CUDA paths: fp16, 4-bit / 8-bit (bitsandbytes, LLM only), flash-attn when importable,
and one streamed answer on the GPU. Skipped with the reason on machines without CUDA
(see conftest.py); run them where a GPU is lent: `pytest -m gpu`."""

from __future__ import annotations

import pytest
import torch

from omnipath.engine import Answer, AnswerOptions, Engine
from omnipath.model.loading import LoadOptions, flash_attn_importable, load_model

pytestmark = pytest.mark.gpu


def _lm_linear_classes(model) -> set[str]:
    return {
        type(m).__name__ for m in model.language_model.modules() if "Linear" in type(m).__name__
    }


def _tissue_png(path):
    """A small H&E-like slide as a PNG (no imagecodecs needed: the offline GPU machine's
    image lacks it, see bench/gpu_check.sh): tissue on the left half."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1600, 1200), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 799, 1199), fill=(225, 140, 185))
    for x in range(0, 790, 14):
        for y in range(0, 1190, 14):
            draw.ellipse((x, y, x + 6, y + 6), fill=(110, 50, 140))
    image.save(path)
    return path


def test_fp16_on_cuda_answers_with_regions(tmp_path):
    from omnipath.slide import open_slide

    loaded = load_model("tiny", LoadOptions(dtype="float16", device="cuda"))
    assert loaded.device.startswith("cuda") and loaded.dtype == "float16"
    assert next(loaded.model.parameters()).dtype == torch.float16
    engine = Engine(loaded.model, loaded.tokenizer, model_id="tiny", revision=None, demo=True)
    with open_slide(_tissue_png(tmp_path / "slide.png")) as slide:
        items = list(
            engine.answer(slide, [], "Where is the lesion?", AnswerOptions(s=4, max_new_tokens=8))
        )
    answer = items[-1]
    assert isinstance(answer, Answer) and answer.error is None
    assert len(answer.regions) == 4
    assert all(r.l0_rect.w > 0 and r.l0_rect.h > 0 for r in answer.regions)


@pytest.mark.parametrize("quantization, layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantized_on_cuda_quantizes_the_llm_only(quantization, layer):
    loaded = load_model("tiny", LoadOptions(quantization=quantization, device="cuda"))
    assert layer in _lm_linear_classes(loaded.model)
    # the towers, projector and mask modules stay 16-bit
    for name, param in loaded.model.named_parameters():
        if not name.startswith("language_model") and param.is_floating_point():
            assert param.dtype == torch.float16, name


def test_flash_attention_is_used_when_importable():
    loaded = load_model("tiny", LoadOptions(dtype="float16", device="cuda"))
    expected = "flash_attention_2" if flash_attn_importable() else "sdpa"
    assert loaded.attn_implementation == expected
