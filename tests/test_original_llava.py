"""Original-LLaVA checkpoints (haotian-liu's format: LLaVA-1.5, Quilt-LLaVA, LLaVA-Med) through
load_model, the engine and the converter.

The tests write, in-process, tiny checkpoints in the exact original format: config.json with
the mm_* keys, safetensors with the original weight names (`model.layers.*`, `lm_head`,
`model.mm_projector.0/2.*`), a tokenizer without `<image>`, and a tiny CLIP vision-tower folder
that `mm_vision_tower` points to. The reference forward below is written from the original
recipe (llava/mm_utils.py, llava_arch.py), independently of the loader: pad to a square of
int(255·mean), CLIP features at layer -2 without CLS, projector, features spliced at the -200
position of `tokenizer_image_token`.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from omnipath.errors import CapabilityError, ModelLoadError, ModelNotFoundError
from omnipath.model.llava_adapter import LlavaAdapter
from omnipath.model.loading import LoadOptions, load_model
from tests.tiny_llava import GRID, IMAGE_SIDE, TOWER_WIDTH, clip_vision_config

CPU32 = LoadOptions(dtype="float32", device="cpu")
TOWER_MEAN = [0.4, 0.45, 0.5]
TOWER_STD = [0.25, 0.3, 0.35]
IMAGE_TOKEN_INDEX = -200  # llava/constants.py
QUESTION = "Where is the tumor?"
# llava/conversation.py, written out: conv_vicuna_v1 and conv_mistral_instruct prompts.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions."
)
ORIGINAL_PROMPTS = {
    "llama": f"{VICUNA_SYSTEM} USER: <image>\n{QUESTION} ASSISTANT:",
    "mistral": f"[INST] <image>\n{QUESTION} [/INST]",
}
LOGITS_TOLERANCE = 1e-4
_CORPUS = [
    f"{VICUNA_SYSTEM} USER: What does this slide show? ASSISTANT: Tissue.</s>",
    "[INST] Where is the tumor? [/INST] The tumor is at [0.12, 0.34, 0.56, 0.78].",
    "Describe the lesion, its grade and the nuclei in this region.",
]


# --- the tiny original-format checkpoints -------------------------------------------------------


def _tokenizer():
    """Byte-level BPE like LLaMA's in what matters here: no <image>, <s> added in front of
    every encoding (add_special_tokens=True), no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    assert "<image>" not in tokenizer.get_vocab()
    return tokenizer


def _write_tower(folder, *, full_clip: bool = False) -> None:
    """A tiny CLIP tower (a vision model, or a whole CLIP model like the openai uploads) and
    its image processor, with a mean/std of its own."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextConfig,
        CLIPVisionModel,
    )

    vision = clip_vision_config()
    torch.manual_seed(1)
    if full_clip:
        text = CLIPTextConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=16,
        )
        CLIPModel(
            CLIPConfig(
                text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16
            )
        ).save_pretrained(folder)
    else:
        CLIPVisionModel(vision).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIDE},
        crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE},
        image_mean=TOWER_MEAN,
        image_std=TOWER_STD,
    ).save_pretrained(folder)


def _text_config(family: str, vocab_size: int):
    from transformers import LlamaConfig, MistralConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaConfig(**common) if family == "llama" else MistralConfig(**common)


def _write_original(folder, tower, *, family="llama", shards=1, tokenizer=None, pickle=False, **mm):
    """An original-format checkpoint in `folder`: config.json as the LLaVA repositories write
    it, weights under the original names (in `shards` safetensors files, or one
    pytorch_model.bin with `pickle`, as the liuhaotian uploads have), a tokenizer."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer or _tokenizer()
    text = _text_config(family, len(tokenizer))
    torch.manual_seed(2)
    lm = AutoModelForCausalLM.from_config(text)
    weights = {k: v.contiguous() for k, v in lm.state_dict().items()}
    projector_type = mm.get("mm_projector_type", "mlp2x_gelu")
    hidden = text.hidden_size
    if projector_type == "linear":
        weights["model.mm_projector.weight"] = torch.randn(hidden, TOWER_WIDTH) * 0.2
        weights["model.mm_projector.bias"] = torch.randn(hidden) * 0.1
    else:
        weights["model.mm_projector.0.weight"] = torch.randn(hidden, TOWER_WIDTH) * 0.2
        weights["model.mm_projector.0.bias"] = torch.randn(hidden) * 0.1
        weights["model.mm_projector.2.weight"] = torch.randn(hidden, hidden) * 0.2
        weights["model.mm_projector.2.bias"] = torch.randn(hidden) * 0.1
    names = sorted(weights)
    if pickle:
        torch.save(weights, folder / "pytorch_model.bin")
    elif shards == 1:
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for index in range(shards):
            part = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
            chunk = {k: weights[k] for k in names[index::shards]}
            save_file(chunk, str(folder / part), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(chunk, part))
        index_file = folder / "model.safetensors.index.json"
        index_file.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = text.to_dict()
    config.update(
        architectures=["LlavaLlamaForCausalLM" if family == "llama" else "LlavaMistralForCausalLM"],
        model_type="llava_llama" if family == "llama" else "llava_mistral",
        mm_vision_tower=str(tower),
        mm_projector_type=projector_type,
        mm_hidden_size=TOWER_WIDTH,
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_patch_merge_type="flat",
        image_aspect_ratio="pad",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        tokenizer_model_max_length=2048,
        tokenizer_padding_side="right",
        torch_dtype="float32",
    )
    config.update(mm)
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(folder)
    return weights


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-tower")
    _write_tower(folder)
    return folder


@pytest.fixture(scope="module", params=["llama", "mistral"])
def original(request, tmp_path_factory, tower):
    """(family, folder, tower folder, original weights): a LLaVA-1.5/Quilt-style Llama
    checkpoint (one safetensors file, a CLIP vision-model tower) and a LLaVA-Med-style Mistral
    one (two shards + index, a whole-CLIP tower)."""
    family = request.param
    folder = tmp_path_factory.mktemp(f"original-{family}")
    tower_folder = tower
    if family == "mistral":
        tower_folder = tmp_path_factory.mktemp("clip-full")
        _write_tower(tower_folder, full_clip=True)
    weights = _write_original(
        folder, tower_folder, family=family, shards=1 if family == "llama" else 2
    )
    return family, folder, tower_folder, weights


@pytest.fixture(scope="module")
def loaded(original):
    return load_model(str(original[1]), CPU32)


# --- the reference: the original recipe ----------------------------------------------------


def _expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """llava/mm_utils.py expand2square."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    if width > height:
        result.paste(image, (0, (width - height) // 2))
    else:
        result.paste(image, ((height - width) // 2, 0))
    return result


def _tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """llava/mm_utils.py tokenizer_image_token: each chunk tokenized with its BOS, BOS kept
    once, IMAGE_TOKEN_INDEX between chunks."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    separated = [x for chunk in chunks for x in (chunk, [IMAGE_TOKEN_INDEX] * (offset + 1))][:-1]
    for part in separated:
        ids.extend(part[offset:])
    return ids


def _reference_logits(family, folder, tower_folder, weights, image: Image.Image):
    """(ids with -200, logits 1×L×V) of the original model on `image` and QUESTION."""
    from transformers import AutoModelForCausalLM, CLIPImageProcessor, CLIPVisionModel

    config = json.loads((folder / "config.json").read_text())
    tokenizer = _tokenizer()
    processor = CLIPImageProcessor.from_pretrained(tower_folder)
    background = tuple(int(x * 255) for x in processor.image_mean)
    square = _expand2square(image.convert("RGB"), background)
    pixels = processor.preprocess(square, return_tensors="pt")["pixel_values"]
    clip = CLIPVisionModel.from_pretrained(tower_folder).eval()
    projector = nn.Sequential(
        nn.Linear(TOWER_WIDTH, 64), nn.GELU(), nn.Linear(64, 64)
    )  # build_vision_projector, mlp2x_gelu
    projector.load_state_dict(
        {
            k.removeprefix("model.mm_projector."): v
            for k, v in weights.items()
            if "mm_projector" in k
        }
    )
    lm = AutoModelForCausalLM.from_config(_text_config(family, len(tokenizer))).eval()
    lm.load_state_dict({k: v for k, v in weights.items() if "mm_projector" not in k}, strict=True)
    with torch.no_grad():
        hidden = clip(pixels, output_hidden_states=True).hidden_states
        features = hidden[config["mm_vision_select_layer"]][:, 1:]  # "patch": CLS dropped
        image_features = projector(features)[0]
        ids = _tokenizer_image_token(ORIGINAL_PROMPTS[family], tokenizer)
        pieces = []
        for token in ids:
            if token == IMAGE_TOKEN_INDEX:
                pieces.append(image_features)
            else:
                pieces.append(lm.get_input_embeddings()(torch.tensor([token])))
        logits = lm(inputs_embeds=torch.cat(pieces).unsqueeze(0)).logits
    return ids, logits, image_features


def _slide_image() -> Image.Image:
    """A wide H&E-like picture the size of the tower's input (no resize on either side)."""
    image = Image.new("RGB", (IMAGE_SIDE, 20), (230, 150, 190))
    draw = ImageDraw.Draw(image)
    for x in range(0, IMAGE_SIDE, 5):
        draw.ellipse((x, 4, x + 3, 7), fill=(110, 50, 140))
        draw.ellipse((x + 2, 12, x + 4, 15), fill=(90, 40, 120))
    return image


def _our_logits(loaded_model, image: Image.Image):
    """(prompt ids, logits) through the engine's own pieces: the square rendered by ThumbFrame
    with the model's padding colour, the chat template, the adapter's forward."""
    from omnipath.coords import ThumbFrame
    from omnipath.engine.prompt import build_prompt
    from omnipath.pgdfc import images_to_tensor

    model, tokenizer = loaded_model.model, loaded_model.tokenizer
    frame = ThumbFrame(image.width, image.height, model.thumb_side)
    square = frame.render(image, fill=model.pad_fill)
    prompt = build_prompt(
        tokenizer,
        [],
        QUESTION,
        image_token_id=model.config.image_token_id,
        num_image_tokens=model.num_image_tokens,
        mask_token_id=-1,
    )
    ids = prompt.prefix_ids + prompt.suffix_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids]), images=images_to_tensor([square])).logits
    return ids, logits


# --- loading and the logits check ----------------------------------------------------------


def test_original_checkpoint_loads_as_llava_adapter(loaded, original):
    family, folder, _, _ = original
    assert loaded.kind == "llava_original"
    assert isinstance(loaded.model, LlavaAdapter) and loaded.model.supports_masks is False
    assert loaded.conversation == ("vicuna_v1" if family == "llama" else "mistral_instruct")
    tokenizer = loaded.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == loaded.model.config.image_token_id == len(_tokenizer())
    # <image> lies past the LM's vocabulary: it can never be generated
    assert loaded.model.language_model.lm_head.out_features == len(_tokenizer())
    assert loaded.model.grid == GRID and loaded.model.thumb_side == IMAGE_SIDE
    assert loaded.model.image_mean == pytest.approx(TOWER_MEAN)
    assert loaded.model.pad_fill == tuple(int(255 * m) for m in TOWER_MEAN)


def test_logits_equal_the_original_recipe(loaded, original):
    """Pad to the mean-colour square, CLIP layer -2 without CLS, projector, splice at -200:
    the adapter's logits equal the reference within LOGITS_TOLERANCE, on the same ids."""
    family, folder, tower_folder, weights = original
    image = _slide_image()
    reference_ids, reference, _ = _reference_logits(family, folder, tower_folder, weights, image)
    ids, ours = _our_logits(loaded, image)
    image_id = loaded.model.config.image_token_id
    expanded = []
    for token in reference_ids:
        expanded += [image_id] * GRID * GRID if token == IMAGE_TOKEN_INDEX else [token]
    assert ids == expanded
    torch.testing.assert_close(ours, reference, rtol=0, atol=LOGITS_TOLERANCE)


def test_engine_answers_with_pgdfc_regions_and_no_masks(loaded, original, tissue_png, monkeypatch):
    """The engine, unchanged, answers on the original checkpoint: PGDFC picks detail regions
    on tissue, the thumbnail is padded with the checkpoint's mean colour, and a box in the
    answer is placed from the padded square (LLaVA-1.5's frame)."""
    open_slide = getattr(pytest.importorskip("omnipath.slide"), "open_slide", None)
    if open_slide is None:
        pytest.skip("omnipath.slide.open_slide is not in this tree yet")
    from omnipath.coords import L0Rect
    from omnipath.engine import Answer, AnswerOptions, Engine

    path, tissue_right = tissue_png
    model, tokenizer = loaded.model, loaded.tokenizer
    engine = Engine(model, tokenizer, model_id=loaded.model_id, revision=None, demo=False)
    from tests.engine_models import script_the_head

    script = tokenizer("tumor: [0.0, 0.25, 0.5, 0.75]", add_special_tokens=False)["input_ids"]
    script_the_head(engine, [*script, tokenizer.eos_token_id], monkeypatch)
    options = AnswerOptions(pgdfc_mode="attention", s=2, max_new_tokens=40)
    with open_slide(path) as slide:
        answer = list(engine.answer(slide, [], QUESTION, options))[-1]
        thumb = engine.thumbs.get(slide, model.thumb_side)
    assert isinstance(answer, Answer) and answer.error is None
    assert len(answer.regions) == 2
    assert all(region.l0_rect.x < tissue_right for region in answer.regions)
    assert answer.masks == [] and engine.info["supports_masks"] is False
    # the wide slide sits in the middle of the square: the top rows are padding of mean colour
    assert thumb.image.getpixel((IMAGE_SIDE // 2, 0)) == model.pad_fill
    # y 0.25–0.75 of the square is y 100–700 of the slide (the slide frame would say 200–600)
    (box,) = answer.boxes
    assert box.label == "tumor" and box.l0_rect == L0Rect(0, 100, 600, 600)


def test_box_placements_differ_between_the_two_frames():
    """The same text placed in the slide frame (OmniPath) and in the padded-square frame
    (LLaVA-1.5): on a 2:1 slide, y 0.25–0.75 of the square is the whole slide height."""
    from omnipath.boxes import BOX_FORMAT_SLIDE, BOX_FORMAT_SQUARE, box_frame, boxes_from_text
    from omnipath.coords import L0Rect, ThumbFrame

    frame = ThumbFrame(2000, 1000, 336)
    text = "gland: [0.0, 0.25, 0.5, 0.75]"
    placed = {
        fmt: boxes_from_text(
            text, l0_width=2000, l0_height=1000, frame=box_frame(fmt), thumb_frame=frame
        )[0].l0_rect
        for fmt in (BOX_FORMAT_SLIDE, BOX_FORMAT_SQUARE)
    }
    assert placed[BOX_FORMAT_SLIDE] == L0Rect(0, 250, 1000, 500)
    assert placed[BOX_FORMAT_SQUARE] == L0Rect(0, 0, 1000, 1000)


def test_llava_adapter_declares_the_square_frame(loaded):
    from omnipath.boxes import BOX_FORMAT_SQUARE

    assert loaded.model.config.box_format == BOX_FORMAT_SQUARE


def test_masks_are_refused(loaded):
    with pytest.raises(CapabilityError, match="cannot produce masks"):
        loaded.model.encode_masks(torch.zeros(1, 1, 16, 16))


def test_pytorch_bin_checkpoint_gives_the_same_logits(tmp_path, tower):
    """LLaVA-1.5's own uploads are pytorch_model.bin files, not safetensors."""
    weights = _write_original(tmp_path, tower, pickle=True)
    assert not list(tmp_path.glob("*.safetensors"))
    image = _slide_image()
    _, reference, _ = _reference_logits("llama", tmp_path, tower, weights, image)
    _, ours = _our_logits(load_model(str(tmp_path), CPU32), image)
    torch.testing.assert_close(ours, reference, rtol=0, atol=LOGITS_TOLERANCE)


def test_linear_projector_checkpoint_loads(tmp_path, tower):
    """mm_projector_type "linear" (model.mm_projector.weight): one Linear."""
    weights = _write_original(tmp_path, tower, mm_projector_type="linear")
    result = load_model(str(tmp_path), CPU32)
    projector = result.model.llava.model.multi_modal_projector
    features = torch.randn(3, TOWER_WIDTH)
    expected = (
        features @ weights["model.mm_projector.weight"].T + weights["model.mm_projector.bias"]
    )
    torch.testing.assert_close(projector(features), expected)


# --- conversations ----------------------------------------------------------------------------


def _render(template_name: str, messages, add_generation_prompt=True) -> str:
    from omnipath.model.conversation import conversation_template

    tokenizer = _tokenizer()
    tokenizer.chat_template = conversation_template(template_name)
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


HISTORY = [
    {"role": "user", "content": "<image>\nWhat is it?"},
    {"role": "assistant", "content": "A gland."},
    {"role": "user", "content": "Where?"},
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "vicuna_v1",
            f"<s>{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A gland.</s>USER: Where? "
            "ASSISTANT:",
        ),
        (
            "llava_v1",
            "<s>A chat between a curious human and an artificial intelligence assistant. The "
            "assistant gives helpful, detailed, and polite answers to the human's questions. "
            "USER: <image>\nWhat is it? ASSISTANT: A gland.</s>USER: Where? ASSISTANT:",
        ),
        (
            "mistral_instruct",
            "<s>[INST] <image>\nWhat is it? [/INST] A gland. </s>[INST] Where? [/INST]",
        ),
        (
            "llama_3",
            "<s><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and "
            "vision assistant. You are able to understand the visual content that the user "
            "provides, and assist the user with a variety of tasks using natural language."
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?"
            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA gland.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhere?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
    ],
)
def test_conversation_templates_render_the_original_prompts(name, expected):
    """Conversation.get_prompt() of llava/conversation.py, turn by turn (the tokenizer adds
    the BOS there; the template writes it here)."""
    assert _render(name, HISTORY) == expected


def test_mistral_instruct_puts_a_system_prompt_in_the_first_turn():
    messages = [{"role": "system", "content": "Be brief."}, HISTORY[0]]
    assert _render("mistral_instruct", messages) == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\nWhat is it? [/INST]"
    )


def test_conversation_flag_overrides_the_checkpoint(original):
    from omnipath.model.conversation import CONVERSATIONS

    result = load_model(
        str(original[1]), LoadOptions(dtype="float32", device="cpu", conversation="llava_v1")
    )
    assert result.conversation == "llava_v1"
    assert result.tokenizer.chat_template == CONVERSATIONS["llava_v1"]


def test_tokenizer_chat_template_wins_over_the_hand_written_one(tmp_path, tower):
    tokenizer = _tokenizer()
    own = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.chat_template = own
    _write_original(tmp_path, tower, tokenizer=tokenizer)
    result = load_model(str(tmp_path), CPU32)
    assert result.conversation is None and result.tokenizer.chat_template == own


def test_unknown_conversation_is_refused_before_loading():
    with pytest.raises(ModelLoadError, match="conversation template 'alpaca' is not known"):
        load_model("tiny", LoadOptions(device="cpu", conversation="alpaca"))


# --- bad checkpoints get a sentence ----------------------------------------------------------


def _config_only(folder, tower, **changes):
    """An original config.json (no weights needed: these fail before any are read)."""
    _write_original(folder, tower)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_vision_tower_folder_is_a_sentence(tmp_path, tower):
    _config_only(tmp_path, tower, mm_vision_tower=str(tmp_path / "no-such-clip"))
    with pytest.raises(ModelNotFoundError, match=r"vision tower .*no-such-clip.* not available"):
        load_model(str(tmp_path), CPU32)


def test_uncached_hub_tower_while_offline_is_a_sentence(tmp_path, tower, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    _config_only(folder, tower, mm_vision_tower="openai-tests/absent-clip-tower")
    with pytest.raises(ModelNotFoundError) as caught:
        load_model(str(folder), CPU32)
    message = caught.value.message
    assert "absent-clip-tower" in message and "HF_HUB_OFFLINE" in message


def test_unknown_projector_type_is_a_sentence(tmp_path, tower):
    _config_only(tmp_path, tower, mm_projector_type="qformer")
    with pytest.raises(ModelLoadError, match="projector type 'qformer'"):
        load_model(str(tmp_path), CPU32)


def test_wrong_mm_hidden_size_is_a_sentence(tmp_path, tower):
    _config_only(tmp_path, tower, mm_hidden_size=1024)
    with pytest.raises(ModelLoadError, match=r"1024 wide \(mm_hidden_size\).* gives 32"):
        load_model(str(tmp_path), CPU32)


def test_projector_weights_that_do_not_fit_are_a_sentence(tmp_path, tower):
    """config says mlp2x_gelu but the weights are a single Linear's."""
    _write_original(tmp_path, tower, mm_projector_type="linear")
    config = json.loads((tmp_path / "config.json").read_text())
    config["mm_projector_type"] = "mlp2x_gelu"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="do not fit a 'mlp2x_gelu' projector"):
        load_model(str(tmp_path), CPU32)


def test_incomplete_tower_weights_are_a_sentence_not_random_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    tower = tmp_path / "tower"
    tower.mkdir()
    _write_tower(tower)
    weights = load_file(str(tower / "model.safetensors"))
    kept = {k: v for k, v in weights.items() if "encoder.layers.0." not in k}
    save_file(kept, str(tower / "model.safetensors"), metadata={"format": "pt"})
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    _write_original(folder, tower)
    with pytest.raises(ModelLoadError, match=r"lack \d+ of the CLIPVisionModel's tensors"):
        load_model(str(folder), CPU32)


def test_original_classes_without_a_vision_tower_are_a_sentence(tmp_path, tower):
    _config_only(tmp_path, tower)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["mm_vision_tower"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="names no vision tower"):
        load_model(str(tmp_path), CPU32)


def test_model_type_llava_alone_is_not_the_original_format(tmp_path):
    """A config with model_type "llava" and no original architecture is transformers' own
    llava: it is NOT read as the original format."""
    from omnipath.model.loading import checkpoint_kind

    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llava", "mm_vision_tower": "x"})
    )
    assert checkpoint_kind(tmp_path) == "llava"


# --- conversion ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(original, tmp_path_factory):
    from omnipath.model.convert import convert

    destination = tmp_path_factory.mktemp("converted") / "llava-hf"
    return convert(str(original[1]), destination)


def test_conversion_keeps_the_logits(converted, loaded):
    """The converted folder loads as transformers' llava and gives the original logits (its
    vocabulary is padded to 64 rows: the original columns are compared)."""
    result = load_model(str(converted), CPU32)
    assert result.kind == "llava"
    assert result.model.pad_fill == loaded.model.pad_fill
    image = _slide_image()
    ids, ours = _our_logits(result, image)
    ids_direct, direct = _our_logits(loaded, image)
    assert ids == ids_direct
    vocab = direct.shape[-1]
    assert ours.shape[-1] % 64 == 0 and ours.shape[-1] > vocab
    torch.testing.assert_close(ours[..., :vocab], direct, rtol=0, atol=LOGITS_TOLERANCE)


def test_converted_weights_follow_the_key_mapping(converted, original):
    """Every original weight is in the converted file under `llava_key`'s name, unchanged
    (the vocabulary tables only gain rows); everything else is the tower, from its folder."""
    from safetensors.torch import load_file
    from transformers import CLIPVisionModel, LlavaForConditionalGeneration

    from omnipath.model.original_llava import llava_key

    _, _, tower_folder, weights = original
    saved = {}
    for path in converted.glob("*.safetensors"):
        saved.update(load_file(str(path)))
    mapped = {llava_key(key) for key in weights}
    for key, tensor in weights.items():
        torch.testing.assert_close(saved[llava_key(key)][: tensor.shape[0]], tensor)
    assert all(k.startswith("vision_tower.") for k in set(saved) - mapped)
    tower = CLIPVisionModel.from_pretrained(tower_folder).state_dict()
    reloaded = LlavaForConditionalGeneration.from_pretrained(converted).model.vision_tower
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, tower[name])


def test_converted_folder_runs_in_plain_transformers(converted, original):
    """LlavaProcessor + LlavaForConditionalGeneration on the converted folder (no OmniPath
    code): the processor pads with the mean colour, and the logits are the original's."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    family, folder, tower_folder, weights = original
    image = _slide_image()
    reference_ids, reference, _ = _reference_logits(family, folder, tower_folder, weights, image)
    processor = LlavaProcessor.from_pretrained(converted)
    model = LlavaForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).eval()
    prompt = ORIGINAL_PROMPTS[family]
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    vocab = reference.shape[-1]
    assert logits.shape[1] == reference.shape[1]
    torch.testing.assert_close(logits[..., :vocab], reference, rtol=0, atol=LOGITS_TOLERANCE)


def test_conversion_refuses_a_non_empty_destination_and_leaves_nothing(original, tmp_path):
    from omnipath.model.convert import main

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    assert main([str(original[1]), str(tmp_path / "taken")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_conversion_of_a_non_original_checkpoint_is_refused(tmp_path):
    from omnipath.model.convert import convert

    source = tmp_path / "omni"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "omnipath"}))
    with pytest.raises(ModelLoadError, match="not an original LLaVA checkpoint"):
        convert(str(source), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- precision -------------------------------------------------------------------------------


def test_four_bit_quantizes_the_llm_only(original):
    import bitsandbytes as bnb

    from omnipath.model.loading import bitsandbytes_problem

    problem = bitsandbytes_problem("4bit", "cpu")
    if problem is not None:
        pytest.skip(f"bitsandbytes cannot run 4bit on this CPU: {problem}")
    result = load_model(str(original[1]), LoadOptions(quantization="4bit", device="cpu"))
    llava = result.model.llava
    quantized = [n for n, m in llava.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(n.startswith("model.language_model.") for n in quantized)
    for part in (llava.model.vision_tower, llava.model.multi_modal_projector, llava.lm_head):
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    ids, logits = _our_logits(result, _slide_image())
    assert torch.isfinite(logits.float()).all()


def test_web_conversation_setting_reaches_the_tokenizer(original):
    """--conversation / OMNIPATH_CONVERSATION: the app's engine renders that template."""
    from omnipath.model.conversation import CONVERSATIONS
    from web.chat_services import build_engine
    from web.config import load_config

    config = load_config(
        ["--model", str(original[1]), "--model-dtype", "float32", "--device", "cpu"],
        environ={"OMNIPATH_CONVERSATION": "llava_v1"},
    )
    assert config.conversation == "llava_v1"
    engine = build_engine(config)
    assert engine.tokenizer.chat_template == CONVERSATIONS["llava_v1"]


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", [None, "4bit"])
def test_on_cuda_fp16_and_4bit_keep_the_argmax(original, quantization):
    """On a GPU: fp16 (and 4-bit LLM) logits stay near the float32 CPU ones."""
    if quantization is not None:
        pytest.importorskip("bitsandbytes")
    family, folder, tower_folder, weights = original
    image = _slide_image()
    _, reference, _ = _reference_logits(family, folder, tower_folder, weights, image)
    result = load_model(
        str(folder), LoadOptions(dtype="float16", device="cuda", quantization=quantization)
    )
    assert result.model.llava.model.vision_tower.dtype == torch.float16
    _, logits = _our_logits(result, image)
    tolerance = 2e-2 if quantization is None else 0.25
    torch.testing.assert_close(logits.float().cpu(), reference, rtol=0, atol=tolerance)
