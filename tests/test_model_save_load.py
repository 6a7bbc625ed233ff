"""save_pretrained → from_pretrained (safetensors) round trip and config round trip on `tiny`."""

from __future__ import annotations

import torch

from omnipath.model import OmniPathConfig, OmniPathForConditionalGeneration, tiny_config


def _inputs(model: OmniPathForConditionalGeneration, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n = model.num_image_tokens
    cfg = model.config
    images = torch.rand(2, 3, model.thumb_side, model.thumb_side, generator=gen)
    text = torch.randint(10, cfg.text_config.vocab_size, (2, 6), generator=gen)
    ids = torch.cat(
        [
            torch.full((2, 1), cfg.text_config.bos_token_id),
            torch.full((2, n), cfg.image_token_id),
            text[:, :3],
            torch.full((2, 1), cfg.mask_token_id),
            text[:, 3:],
        ],
        dim=1,
    )
    return ids, images


def test_config_round_trip(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    loaded = OmniPathConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.grid == config.grid and loaded.vision_channels == config.vision_channels
    assert loaded.text_config.num_key_value_heads == 2  # GQA survives
    assert loaded.mask_config.encoder_layers == [1, 1, 1, 1]
    assert loaded.pgdfc_config.tokens_per_patch == config.pgdfc_config.tokens_per_patch


def test_save_load_round_trip_gives_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = OmniPathForConditionalGeneration(tiny_config()).eval()
    model.save_pretrained(tmp_path)  # safetensors, with the LM's tied embeddings
    assert (tmp_path / "model.safetensors").is_file()
    loaded = OmniPathForConditionalGeneration.from_pretrained(tmp_path).eval()

    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    lm = loaded.language_model
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight

    ids, images = _inputs(model)
    with torch.no_grad():
        a = model(input_ids=ids, images=images, return_mask_logits=True)
        b = loaded(input_ids=ids, images=images, return_mask_logits=True)
    # Same weights bit for bit; the outputs may differ in the last bit only because the loaded
    # (memory-mapped) tensors have another alignment, so BLAS can pick other kernels.
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.mask_logits, b.mask_logits, rtol=0, atol=1e-6)


def test_auto_classes_load_a_saved_model(tmp_path):
    from transformers import AutoConfig, AutoModelForImageTextToText

    from omnipath.model import register_with_auto

    register_with_auto()
    register_with_auto()  # idempotent
    torch.manual_seed(0)
    OmniPathForConditionalGeneration(tiny_config()).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), OmniPathConfig)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert isinstance(model, OmniPathForConditionalGeneration)


def test_parts_missing_from_a_checkpoint_are_initialised_not_garbage(tmp_path):
    """E.g. a checkpoint converted from LLaVA + UNI has no mask modules yet."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    OmniPathForConditionalGeneration(tiny_config()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = ("mask_decoder.", "mask_encoder.", "vision.uni.", "projector.")
    kept = {k: v for k, v in weights.items() if not k.startswith(dropped)}
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})

    model = OmniPathForConditionalGeneration.from_pretrained(tmp_path)
    state = model.state_dict()
    for key in kept:  # what the checkpoint holds is loaded as is
        assert torch.equal(state[key], weights[key]), key
    init_values = model.config.uni_config.init_values
    assert torch.all(state["vision.uni.model.blocks.0.ls1.gamma"] == init_values)
    assert torch.all(state["mask_encoder.resnet.bn1.running_var"] == 1)
    linear = state["mask_decoder.decoder.transformer.layers.0.self_attn.q_proj.weight"]
    assert 0.01 < linear.std() < 0.03
    assert 0.01 < state["projector.linear_1.weight"].std() < 0.03
    for key, value in state.items():
        assert torch.isfinite(value.float()).all(), key
        assert value.float().abs().max() < 100, key
