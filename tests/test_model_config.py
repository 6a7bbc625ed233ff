"""OmniPathConfig presets and validation, and the offline tiny tokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from omnipath.model import (
    ModelInputError,
    OmniPathConfig,
    OmniPathForConditionalGeneration,
    TokenCountError,
    build_tiny_tokenizer,
    omnipath_13b_config,
    smollm2_135m_text_config,
    tiny_config,
)
from omnipath.model.tokenization import expand_image_placeholders


def test_13b_preset_has_the_papers_shapes():
    config = omnipath_13b_config()  # described only: never instantiated
    assert config.vision_config.model_type == "siglip_vision_model"
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (384, 14)
    assert config.vision_config.hidden_size == 1152 and config.vision_config.num_hidden_layers == 27
    assert config.grid == 27 and config.num_image_tokens == 729
    assert config.uni_config.grid == 14 and config.uni_config.embed_dim == 1024
    assert config.uni_config.init_values == 1e-5 and config.uni_config.dynamic_img_size
    assert config.text_config.model_type == "llama" and config.text_config.hidden_size == 5120
    assert config.text_config.num_hidden_layers == 40
    assert config.vision_channels == 2 * (1152 + 1024)
    assert config.resolved_thumb_side == 768
    assert config.mask_config.encoder_layers == [3, 4, 6, 3]  # ResNet-50
    assert config.mask_config.transformer_dim == 256
    assert config.pgdfc_config.num_detail_patches == 8


def test_smollm2_text_config_is_gqa():
    text = smollm2_135m_text_config()
    assert (text.hidden_size, text.num_hidden_layers) == (576, 30)
    assert (text.num_attention_heads, text.num_key_value_heads) == (9, 3)
    assert text.vocab_size == 49152 and text.tie_word_embeddings


def test_tiny_config_builds(tmp_path):
    config = tiny_config()
    assert 32 <= config.text_config.hidden_size <= 64
    assert config.text_config.num_hidden_layers == 2
    model = OmniPathForConditionalGeneration(config)
    assert model.supports_masks is True
    assert model.num_image_tokens == config.num_image_tokens == 64


@pytest.mark.parametrize(
    "change, message",
    [
        ({"scale_factors": [0, 1]}, "scale_factors"),
        ({"scale_factors": [2, 2]}, "repeat"),
        ({"image_token_id": 10_000}, "outside the vocabulary"),
        ({"mask_token_id": 4}, "must differ"),
    ],
)
def test_bad_configs_are_refused(change, message):
    kwargs = tiny_config().to_dict()
    kwargs.update(change)
    with pytest.raises(ModelInputError, match=message):
        OmniPathConfig(**kwargs)


def test_non_square_tokens_per_patch_is_refused():
    kwargs = tiny_config().to_dict()
    kwargs["pgdfc_config"]["tokens_per_patch"] = 5
    with pytest.raises(ModelInputError, match="tokens_per_patch"):
        OmniPathConfig(**kwargs)


def test_tiny_tokenizer_matches_tiny_config(tmp_path):
    tokenizer = build_tiny_tokenizer()
    config = tiny_config()
    assert len(tokenizer) <= config.text_config.vocab_size
    assert tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id
    assert tokenizer.convert_tokens_to_ids("<mask>") == config.mask_token_id
    assert tokenizer.bos_token_id == config.text_config.bos_token_id
    assert tokenizer.eos_token_id == config.text_config.eos_token_id
    assert tokenizer.pad_token_id == config.text_config.pad_token_id

    messages = [{"role": "user", "content": "<image>\nWhere is the tumor? <mask>"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<s>USER: <image>\nWhere is the tumor? <mask>\nASSISTANT:"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids.count(config.image_token_id) == 1 and ids.count(config.mask_token_id) == 1
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer("naïve ✓").input_ids) == "naïve ✓"  # byte fallback

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text, add_special_tokens=False).input_ids == ids
    assert reloaded.chat_template == tokenizer.chat_template


def test_tiny_tokenizer_is_deterministic():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    sentence = "Grade the lesion in [0.120, 0.340, 0.560, 0.780]."
    assert a(sentence).input_ids == b(sentence).input_ids


def test_expand_image_placeholders():
    assert expand_image_placeholders([1, 4, 9, 4, 2], 4, [3, 2]) == [1, 4, 4, 4, 9, 4, 4, 2]
    with pytest.raises(TokenCountError, match="2 image placeholders but 1"):
        expand_image_placeholders([1, 4, 9, 4], 4, [3])


def test_13b_preset_builds_on_the_meta_device():
    """Shapes only: the meta device allocates no memory, so this checks the preset is
    buildable and has the paper's parameter counts without instantiating any weights."""
    import torch

    with torch.device("meta"):
        model = OmniPathForConditionalGeneration(omnipath_13b_config())

    def millions(module):
        return sum(p.numel() for p in module.parameters()) / 1e6

    assert 12_900 < millions(model.language_model) < 13_100  # Vicuna-13B
    assert 400 < millions(model.vision.siglip) < 430  # SigLIP SO400M (no pooling head)
    assert 300 < millions(model.vision.uni) < 310  # ViT-L/16
    assert 23 < millions(model.mask_encoder.resnet) - 2048 * 5120 / 1e6 - 5120 / 1e6 < 24
    assert model.num_image_tokens == 729


def test_small_preset_is_about_100m_parameters():
    import torch

    from omnipath.model import small_config

    with torch.device("meta"):
        model = OmniPathForConditionalGeneration(small_config())
    total = sum(p.numel() for p in model.parameters()) / 1e6
    assert 90 < total < 110
    assert model.num_image_tokens == 576 and model.thumb_side == 768
    tokenizer = build_tiny_tokenizer()
    assert tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
