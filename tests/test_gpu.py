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


def test_fp16_on_cuda_answers_with_regions(tissue_png):
    from omnipath.slide import open_slide

    loaded = load_model("tiny", LoadOptions(dtype="float16", device="cuda"))
    assert loaded.device.startswith("cuda") and loaded.dtype == "float16"
    assert next(loaded.model.parameters()).dtype == torch.float16
    engine = Engine(loaded.model, loaded.tokenizer, model_id="tiny", revision=None, demo=True)
    # a PNG: the offline GPU machine has no imagecodecs for the synthetic TIFF writer
    with open_slide(tissue_png[0]) as slide:
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
