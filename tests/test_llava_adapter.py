"""Stock transformers LLaVA checkpoints through load_model and LlavaAdapter.

A tiny LlavaConfig (CLIP vision 32 px / patch 8 → a 4×4 grid, Llama text 64-d, 2 layers) is
built in-process, saved with save_pretrained (+ processor with its own mean/std), and loaded
back through load_model exactly as a real LLaVA-1.5 folder would be.
"""

from __future__ import annotations

import pytest
import torch

from omnipath.boxes import BOX_FORMAT_SQUARE
from omnipath.errors import CapabilityError, ModelLoadError
from omnipath.model.llava_adapter import CLIP_MEAN, LlavaAdapter
from omnipath.model.loading import LoadOptions, load_model
from tests.tiny_llava import GRID, IMAGE_SIDE, PATCH, clip_vision_config

WORDS = "USER ASSISTANT : hello what is this slide tumor where".split()
PROCESSOR_MEAN = [0.1, 0.2, 0.3]
PROCESSOR_STD = [0.5, 0.4, 0.3]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 3}
    for word in WORDS:
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )


def _llava_config(**overrides):
    from transformers import LlamaConfig, LlavaConfig

    vision = clip_vision_config()
    # 64 wide: bitsandbytes' CPU 4-bit kernels need in_features that are multiples of 64.
    text = LlamaConfig(
        vocab_size=4 + len(WORDS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    settings = {"image_token_index": 3, "image_seq_length": GRID * GRID}
    settings.update(overrides)
    return LlavaConfig(vision_config=vision, text_config=text, **settings)


def _save_llava(folder, *, with_processor=True, **overrides):
    from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(_llava_config(**overrides))
    model.save_pretrained(folder)
    tokenizer = _tokenizer()
    if with_processor:
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIDE},
            crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE},
            image_mean=PROCESSOR_MEAN,
            image_std=PROCESSOR_STD,
        )
        LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=PATCH,
            vision_feature_select_strategy="default",
        ).save_pretrained(folder)
    else:
        tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llava")
    reference = _save_llava(folder)
    return folder, reference.eval()


@pytest.fixture(scope="module")
def loaded(llava_folder):
    folder, _ = llava_folder
    return load_model(str(folder), LoadOptions(dtype="float32", device="cpu"))


def _prompt_ids(tokenizer, n_image_tokens: int) -> torch.Tensor:
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    words = tokenizer("USER : what is this slide ASSISTANT :", add_special_tokens=False).input_ids
    return torch.tensor([[1] + [image_id] * n_image_tokens + words])


def test_llava_folder_loads_as_adapter(loaded, llava_folder):
    folder, _ = llava_folder
    assert loaded.kind == "llava"
    assert isinstance(loaded.model, LlavaAdapter)
    assert loaded.model_id == str(folder)
    assert loaded.dtype == "float32" and loaded.device == "cpu"
    assert loaded.model.supports_masks is False
    assert loaded.model.config.image_token_id == 3
    assert loaded.model.config.mask_token_id is None
    assert loaded.model.grid == GRID
    assert loaded.model.num_image_tokens == GRID * GRID
    assert loaded.model.thumb_side == IMAGE_SIDE
    # it sees the slide padded to a square, and writes boxes relative to that square
    assert loaded.model.config.box_format == BOX_FORMAT_SQUARE
    assert loaded.model.pad_fill is None  # CLIPImageProcessor does not pad: white, as before


def test_adapter_uses_the_checkpoints_normalization(loaded):
    assert loaded.model.image_mean == pytest.approx(PROCESSOR_MEAN)
    assert loaded.model.image_std == pytest.approx(PROCESSOR_STD)


def test_missing_processor_falls_back_to_clip_normalization(tmp_path):
    _save_llava(tmp_path, with_processor=False)
    result = load_model(str(tmp_path), LoadOptions(dtype="float32", device="cpu"))
    assert result.model.image_mean == pytest.approx(CLIP_MEAN)


def test_encode_images_gives_grid_tokens_and_feature_map(loaded):
    model = loaded.model
    images = torch.rand(2, 3, 48, 48)  # not the tower's size: the adapter resizes
    with torch.no_grad():
        tokens, feature_map = model.encode_images(images)
    text_hidden = model.config.text_config.hidden_size
    vision_hidden = model.config.vision_config.hidden_size
    assert tokens.shape == (2, GRID * GRID, text_hidden)
    assert feature_map.shape == (2, vision_hidden, GRID, GRID)
    assert torch.isfinite(tokens).all()


def test_encode_images_matches_llava_own_image_features(loaded, llava_folder):
    """Same layer (-2), CLS dropped, same projector: equal to transformers' own path when both
    get the same normalized pixels."""
    _, reference = llava_folder
    model = loaded.model
    images = torch.rand(1, 3, IMAGE_SIDE, IMAGE_SIDE)
    mean = torch.tensor(PROCESSOR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PROCESSOR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ours, _ = model.encode_images(images)
        theirs = reference.get_image_features(pixel_values=(images - mean) / std).pooler_output
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-4, atol=1e-5)


def test_forward_on_merged_embeddings(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    input_ids = _prompt_ids(tokenizer, model.num_image_tokens)
    with torch.no_grad():
        tokens, _ = model.encode_images(torch.rand(1, 3, IMAGE_SIDE, IMAGE_SIDE))
        embeds = model.embed_tokens(input_ids)
        merged = model.merge_embeddings(input_ids, embeds, [tokens[0]])
        logits = model.language_model(inputs_embeds=merged).logits
    assert logits.shape == (1, input_ids.shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    image_rows = input_ids[0] == model.config.image_token_id
    torch.testing.assert_close(merged[0, image_rows], tokens[0])
    torch.testing.assert_close(merged[0, ~image_rows], embeds[0, ~image_rows])


def test_language_model_shares_llava_weights_and_matches_its_forward(loaded):
    """The causal-LM view runs LLaVA's own decoder and head: identical logits."""
    model, tokenizer = loaded.model, loaded.tokenizer
    input_ids = _prompt_ids(tokenizer, model.num_image_tokens)
    images = torch.rand(1, 3, IMAGE_SIDE, IMAGE_SIDE)
    with torch.no_grad():
        ours = model(input_ids, images=images).logits
        mean = torch.tensor(PROCESSOR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(PROCESSOR_STD).view(1, 3, 1, 1)
        theirs = model.llava(input_ids=input_ids, pixel_values=(images - mean) / std).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert model.language_model.lm_head is model.llava.lm_head
    assert model.language_model.model.layers[0] is model.llava.model.language_model.layers[0]


def test_language_model_generates(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    input_ids = _prompt_ids(tokenizer, model.num_image_tokens)
    with torch.no_grad():
        tokens, _ = model.encode_images(torch.rand(1, 3, IMAGE_SIDE, IMAGE_SIDE))
        merged = model.merge_embeddings(input_ids, model.embed_tokens(input_ids), tokens)
        out = model.language_model.generate(
            inputs_embeds=merged, max_new_tokens=3, do_sample=False, pad_token_id=2
        )
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 3


def test_pgdfc_probe_runs_on_the_adapter(loaded, llava_folder):
    """PGDFC needs only language_model's layer 0: on the sdpa model the probe row equals the
    eager attention of the same checkpoint loaded with attn_implementation="eager"."""
    from omnipath.pgdfc import probe_prepass

    folder, _ = llava_folder
    eager = load_model(
        str(folder), LoadOptions(dtype="float32", device="cpu", attn_implementation="eager")
    ).model
    model, tokenizer = loaded.model, loaded.tokenizer
    assert loaded.attn_implementation == "sdpa"
    input_ids = _prompt_ids(tokenizer, model.num_image_tokens)
    with torch.no_grad():
        tokens, _ = model.encode_images(torch.rand(1, 3, IMAGE_SIDE, IMAGE_SIDE))
        merged = model.merge_embeddings(input_ids, model.embed_tokens(input_ids), tokens)
        row = probe_prepass(model.language_model, merged).mean(dim=1)
        reference = eager.language_model.model(inputs_embeds=merged, output_attentions=True)
    expected = reference.attentions[0][:, :, -1, :].mean(dim=1)
    torch.testing.assert_close(row, expected.float(), rtol=1e-5, atol=1e-5)


def test_detail_patches_pool_to_the_asked_token_count(loaded):
    model = loaded.model
    with torch.no_grad():
        patches = model.encode_detail_patches(torch.rand(3, 3, IMAGE_SIDE, IMAGE_SIDE), 4)
    assert patches.shape == (3, 4, model.config.text_config.hidden_size)


def test_detail_patches_reject_non_square_token_counts(loaded):
    from omnipath.model import ModelInputError

    with pytest.raises(ModelInputError, match="square"):
        loaded.model.encode_detail_patches(torch.rand(1, 3, IMAGE_SIDE, IMAGE_SIDE), 3)


def test_merge_count_mismatch_fails_loudly(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    input_ids = _prompt_ids(tokenizer, model.num_image_tokens)
    embeds = model.embed_tokens(input_ids)
    too_few = torch.zeros(model.num_image_tokens - 1, embeds.shape[-1])
    with pytest.raises(ValueError, match="placeholders"):
        model.merge_embeddings(input_ids, embeds, [too_few])


def test_masks_are_refused_with_a_sentence(loaded):
    model = loaded.model
    with pytest.raises(CapabilityError, match="cannot produce masks"):
        model.encode_masks(torch.zeros(1, 1, 16, 16))
    with pytest.raises(CapabilityError, match="cannot produce masks"):
        model.decode_masks(torch.zeros(1, 64), torch.zeros(1, 32, GRID, GRID))
    input_ids = _prompt_ids(loaded.tokenizer, 0)
    embeds = model.embed_tokens(input_ids)
    with pytest.raises(CapabilityError):
        model.merge_embeddings(input_ids, embeds, [], mask_embeds=torch.zeros(1, 64))


def test_llava_keeping_cls_is_refused(tmp_path):
    _save_llava(tmp_path, vision_feature_select_strategy="full")
    with pytest.raises(ModelLoadError, match="square grid"):
        load_model(str(tmp_path), LoadOptions(dtype="float32", device="cpu"))


def test_tokenizer_that_does_not_match_the_image_token_is_refused(tmp_path):
    _save_llava(tmp_path, image_token_index=5)  # the tokenizer's <image> is 3
    with pytest.raises(ModelLoadError, match="does not belong"):
        load_model(str(tmp_path), LoadOptions(dtype="float32", device="cpu"))


def test_four_bit_llava_on_cpu_quantizes_the_llm_only(llava_folder):
    import bitsandbytes as bnb

    from omnipath.model.loading import bitsandbytes_problem

    problem = bitsandbytes_problem("4bit", "cpu")
    if problem is not None:
        pytest.skip(f"bitsandbytes cannot run 4bit on this CPU: {problem}")
    folder, _ = llava_folder
    result = load_model(str(folder), LoadOptions(quantization="4bit", device="cpu"))
    llava = result.model.llava
    quantized = [n for n, m in llava.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(n.startswith("model.language_model.") for n in quantized)
    for part in (llava.model.vision_tower, llava.model.multi_modal_projector, llava.lm_head):
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    input_ids = _prompt_ids(result.tokenizer, result.model.num_image_tokens)
    with torch.no_grad():
        logits = result.model(input_ids, images=torch.rand(1, 3, IMAGE_SIDE, IMAGE_SIDE)).logits
    assert torch.isfinite(logits.float()).all()


def test_engine_answers_with_pgdfc_on_the_adapter(loaded, tissue_png):
    """The engine, unchanged, runs PGDFC on a stock LLaVA checkpoint: detail regions are
    chosen on tissue, and no masks are produced."""
    slide_module = pytest.importorskip("omnipath.slide")
    if not hasattr(slide_module, "open_slide"):
        pytest.skip("omnipath.slide.open_slide is not in this tree yet")
    from omnipath.engine import Answer, AnswerOptions, Engine

    path, tissue_right = tissue_png

    engine = Engine(
        loaded.model, loaded.tokenizer, model_id=loaded.model_id, revision=None, demo=False
    )
    options = AnswerOptions(pgdfc_mode="attention", s=2, max_new_tokens=3)
    with slide_module.open_slide(path) as slide:
        items = list(engine.answer(slide, [], "Where is the tumor?", options))
    answer = items[-1]
    assert isinstance(answer, Answer) and answer.error is None
    assert len(answer.regions) == 2
    assert all(region.l0_rect.x < tissue_right for region in answer.regions)
    assert answer.masks == []
    assert engine.info["supports_masks"] is False
