"""The tiny OmniPath model end to end: merging and its count checks, detail patches, mask
encoder/decoder shapes, losses, gradient flow, bf16, and generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omnipath.model import (
    ModelInputError,
    OmniPathForConditionalGeneration,
    TokenCountError,
    tiny_config,
)
from omnipath.model.mask_modules import dice_loss, mask_loss


@pytest.fixture(scope="module")
def model() -> OmniPathForConditionalGeneration:
    torch.manual_seed(0)
    return OmniPathForConditionalGeneration(tiny_config()).eval()


def _ids(model, *blocks) -> torch.Tensor:
    """One row of token ids from (token_id, count) blocks."""
    row = [token for token, count in blocks for _ in range(count)]
    return torch.tensor([row])


def _prompt(model, n_images=None, masks=1, text=(10, 11, 12)) -> torch.Tensor:
    cfg = model.config
    n = model.num_image_tokens if n_images is None else n_images
    blocks = [(cfg.text_config.bos_token_id, 1), (cfg.image_token_id, n)]
    blocks += [(t, 1) for t in text[:2]] + [(cfg.mask_token_id, masks)] + [(text[2], 1)]
    return _ids(model, *blocks)


def test_merge_places_features_exactly_at_placeholders(model):
    ids = torch.cat([_prompt(model), _prompt(model)])
    embeds = model.embed_tokens(ids)
    features = [torch.randn(64, 64), torch.randn(64, 64)]
    merged = model.merge_embeddings(ids, embeds, features)
    slots = ids == model.config.image_token_id
    torch.testing.assert_close(merged[slots], torch.cat(features))
    torch.testing.assert_close(merged[~slots], embeds[~slots])


def test_merge_count_checks_fail_loudly(model):
    ids = _prompt(model)
    embeds = model.embed_tokens(ids)
    with pytest.raises(TokenCountError, match="64 image placeholder tokens .* 63 image feature"):
        model.merge_embeddings(ids, embeds, [torch.randn(63, 64)])
    with pytest.raises(TokenCountError, match="64 image placeholder tokens .* 128 image feature"):
        model.merge_embeddings(ids, embeds, torch.randn(2, 64, 64))
    with pytest.raises(TokenCountError, match="2 mask maps .* only 1 <mask>"):
        model.merge_embeddings(ids, embeds, [torch.randn(64, 64)], mask_embeds=torch.randn(2, 64))
    with pytest.raises(TokenCountError, match="placeholder"):
        model(input_ids=ids)  # placeholders but no images
    with pytest.raises(TokenCountError, match="placeholder"):
        model(input_ids=_prompt(model, n_images=60), images=torch.rand(1, 3, 128, 128))


def test_mask_input_replaces_the_mask_token_embedding(model):
    ids = _prompt(model, masks=2)
    embeds = model.embed_tokens(ids)
    mask_embed = model.encode_masks(torch.zeros(1, 1, 50, 50))
    merged = model.merge_embeddings(ids, embeds, [torch.randn(64, 64)], mask_embeds=mask_embed)
    first, second = (ids[0] == model.config.mask_token_id).nonzero().flatten().tolist()
    torch.testing.assert_close(merged[0, first], mask_embed[0])
    torch.testing.assert_close(merged[0, second], embeds[0, second])  # an output <mask>


def test_mask_encoder_and_decoder_shapes(model):
    g, d = model.grid, model.config.text_config.hidden_size
    maps = (torch.rand(3, 1, 77, 77) > 0.5).float()
    assert model.encode_masks(maps).shape == (3, d)
    with pytest.raises(ModelInputError, match="B×1×H×W"):
        model.encode_masks(torch.rand(3, 77, 77))
    feature_map = torch.randn(3, model.config.vision_channels, g, g)
    logits = model.decode_masks(torch.randn(3, d), feature_map)
    assert logits.shape == (3, 1, 4 * g, 4 * g)
    with pytest.raises(ModelInputError, match="same K"):
        model.decode_masks(torch.randn(2, d), feature_map)


def test_each_mask_is_decoded_from_its_own_image(model):
    g, d = model.grid, model.config.text_config.hidden_size
    hidden = torch.randn(2, d)
    feature_map = torch.randn(2, model.config.vision_channels, g, g)
    with torch.no_grad():
        together = model.decode_masks(hidden, feature_map)
        alone = model.decode_masks(hidden[1:], feature_map[1:])
    torch.testing.assert_close(together[1:], alone)


def test_detail_patches_shapes_and_counts(model):
    patches = torch.rand(3, 3, 90, 90)
    tokens = model.encode_detail_patches(patches, tokens_per_patch=4)
    assert tokens.shape == (3, 4, model.config.text_config.hidden_size)
    assert model.encode_detail_patches(patches[:0], 4).shape == (0, 4, 64)
    for bad in (0, 3, 81):  # not square / larger than the 8×8 grid
        with pytest.raises(ModelInputError, match="tokens_per_patch"):
            model.encode_detail_patches(patches, bad)
    # placeholders must equal N + S·P
    ids = _prompt(model, n_images=64 + 3 * 4)
    out = model(input_ids=ids, images=torch.rand(1, 3, 128, 128), detail_images=[patches])
    assert out.logits.shape == (1, ids.shape[1], model.config.text_config.vocab_size)
    with pytest.raises(TokenCountError):
        model(input_ids=ids, images=torch.rand(1, 3, 128, 128), detail_images=[patches[:2]])


def test_losses_match_their_definitions(model):
    ids = _prompt(model)
    images = torch.rand(1, 3, 128, 128)
    target = torch.zeros(1, 1, 128, 128)
    target[..., 20:70, 30:90] = 1
    with torch.no_grad():
        out = model(input_ids=ids, images=images, labels=ids, mask_targets=target)
    expected_ce = F.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    torch.testing.assert_close(out.lm_loss, expected_ce)
    assert out.mask_logits.shape == (1, 1, 32, 32)
    mc = model.config.mask_config
    torch.testing.assert_close(
        out.mask_loss, mask_loss(out.mask_logits, target, mc.bce_weight, mc.dice_weight)
    )
    torch.testing.assert_close(out.loss, out.lm_loss + mc.loss_weight * out.mask_loss)
    with pytest.raises(TokenCountError, match="1 output <mask> tokens but 2 mask targets"):
        model(input_ids=ids, images=images, mask_targets=target.repeat(2, 1, 1, 1))


def test_dice_loss_values():
    target = torch.zeros(1, 1, 8, 8)
    target[..., :4, :] = 1
    perfect = torch.where(target > 0, 30.0, -30.0)
    assert dice_loss(perfect, target) < 1e-6
    assert dice_loss(-perfect, target) > 0.95


def test_mask_hidden_state_is_the_one_that_predicted_mask(model):
    ids = _prompt(model)
    batch_idx, pos = model.output_mask_positions(ids)
    (mask_at,) = (ids[0] == model.config.mask_token_id).nonzero().flatten().tolist()
    assert batch_idx.tolist() == [0] and pos.tolist() == [mask_at - 1]


def test_gradient_reaches_every_part_from_the_combined_loss():
    torch.manual_seed(0)
    model = OmniPathForConditionalGeneration(tiny_config()).train()
    ids = _prompt(model, masks=2)  # first <mask>: input region; second: output to decode
    target = torch.zeros(1, 1, 128, 128)
    target[..., 10:60, 10:60] = 1
    out = model(
        input_ids=ids,
        images=torch.rand(1, 3, 128, 128),
        labels=ids,
        mask_maps=target,
        mask_targets=target,
    )
    out.loss.backward()
    probes = {
        "mask decoder": model.mask_decoder.decoder.transformer.layers[0].self_attn.q_proj.weight,
        "mask decoder upscaling": model.mask_decoder.decoder.output_upscaling[0].weight,
        "hidden projection": model.mask_decoder.hidden_proj[0].weight,
        "feature projection": model.mask_decoder.feature_proj.weight,
        "mask encoder": model.mask_encoder.resnet.conv1.weight,
        "projector": model.projector.linear_1.weight,
        "siglip": model.vision.siglip.model.embeddings.patch_embedding.weight,
        "uni": model.vision.uni.model.patch_embed.proj.weight,
        "language model": model.language_model.get_input_embeddings().weight,
    }
    for name, param in probes.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_bfloat16_forward_on_cpu():
    torch.manual_seed(0)
    model = OmniPathForConditionalGeneration(tiny_config()).to(torch.bfloat16).eval()
    ids = _prompt(model)
    target = torch.ones(1, 1, 64, 64)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            images=torch.rand(1, 3, 128, 128),
            labels=ids,
            mask_maps=None,
            mask_targets=target,
        )
    assert out.logits.dtype == torch.bfloat16 and out.mask_logits.dtype == torch.bfloat16
    assert torch.isfinite(out.loss)


def test_generate_with_images_equals_language_model_on_merged_embeddings(model):
    cfg = model.config
    ids = _ids(model, (cfg.text_config.bos_token_id, 1), (cfg.image_token_id, 64), (10, 1), (11, 1))
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        full = model.generate(input_ids=ids, images=images, max_new_tokens=4, do_sample=False)
        tokens, _ = model.encode_images(images)
        embeds = model.merge_embeddings(ids, model.embed_tokens(ids), [tokens[0]])
        by_embeds = model.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False)
        by_lm = model.language_model.generate(
            inputs_embeds=embeds, max_new_tokens=4, do_sample=False
        )
    assert full.shape == (1, ids.shape[1] + 4)
    assert full[:, ids.shape[1] :].tolist() == by_embeds.tolist() == by_lm.tolist()


def test_smollm2_style_gqa_language_model():
    """9 query heads over 3 key/value heads, as SmolLM2-135M (shrunk to hidden 72)."""
    config = tiny_config()
    text = config.text_config
    text.hidden_size, text.intermediate_size = 72, 144
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 9, 3, 8
    torch.manual_seed(0)
    model = OmniPathForConditionalGeneration(config).eval()
    ids = _prompt(model)
    with torch.no_grad():
        out = model(input_ids=ids, images=torch.rand(1, 3, 128, 128), return_mask_logits=True)
    assert out.logits.shape[-1] == text.vocab_size and out.mask_logits.shape == (1, 1, 32, 32)


def test_no_output_masks_gives_an_empty_mask_batch(model):
    g = model.grid
    empty = model.decode_masks(
        torch.zeros(0, 64), torch.zeros(0, model.config.vision_channels, g, g)
    )
    assert empty.shape == (0, 1, 4 * g, 4 * g)
    ids = _prompt(model, masks=0)
    with torch.no_grad():
        out = model(input_ids=ids, images=torch.rand(1, 3, 128, 128), return_mask_logits=True)
    assert out.mask_logits.shape == (0, 1, 4 * g, 4 * g)


def test_inputs_embeds_with_images_is_refused(model):
    ids = _prompt(model)
    with pytest.raises(ModelInputError, match="already merged"):
        model(inputs_embeds=model.embed_tokens(ids), images=torch.rand(1, 3, 128, 128))


def test_counts_are_checked_per_sequence(model):
    """Two sequences whose totals match but whose rows do not must be refused."""
    cfg = model.config
    bos, image = cfg.text_config.bos_token_id, cfg.image_token_id
    row_a = _ids(model, (bos, 1), (image, 64 + 4), (10, 1))  # thumbnail + 1 detail patch
    row_b = _ids(model, (bos, 1), (image, 64), (10, 5))
    ids = torch.cat([row_a, row_b])
    images = torch.rand(2, 3, 128, 128)
    patch = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model(input_ids=ids, images=images, detail_images=[patch, None])  # rows match
        with pytest.raises(TokenCountError, match="Sequence 0 has 68 .* 64 image feature"):
            model(input_ids=ids, images=images, detail_images=[None, patch])
        with pytest.raises(ModelInputError, match="one per sequence"):
            model(input_ids=ids, images=images[:1])
