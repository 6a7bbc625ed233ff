"""The engine on `tiny` and generated slides: streaming, PGDFC, masks, boxes, options, errors."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from omnipath.coords import L0Rect, ThumbFrame
from omnipath.engine import Answer, AnswerOptions, Engine, MaskResult
from omnipath.engine.masks import place_mask, region_map
from omnipath.engine.prompt import build_prompt, clean_text
from omnipath.engine.results import bitmap_rle
from omnipath.engine.thumbs import ThumbnailCache
from omnipath.errors import DeviceOutOfMemoryError, OptionsError, TokenBudgetError
from tests.engine_models import (
    SLIDE_H,
    SLIDE_W,
    TISSUE_RIGHT,
    script_the_head,
    tiny_llava_adapter,
    tiny_model,
)
from tests.engine_models import (
    write_slide as _write_slide,
)

# --- units without a model ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        (AnswerOptions(s=0), "at least one detail patch"),
        (AnswerOptions(pgdfc_mode="zoom"), "not known"),
        (AnswerOptions(max_new_tokens=10**9), "max_new_tokens = 1000000000 is out of range"),
        (AnswerOptions(max_new_tokens=0), "out of range"),
        (AnswerOptions(temperature=-1.0), "temperature"),
        (AnswerOptions(top_p=0.0), "top_p"),
        (AnswerOptions(timeout_s=0), "timeout_s"),
        (AnswerOptions(s=1000), "more than the 64 allowed"),
        (AnswerOptions(seed=-1), "seed"),
        (AnswerOptions(top_k=-1), "top_k = -1"),
        (AnswerOptions(repetition_penalty=0.0), "repetition_penalty"),
    ],
)
def test_options_validation(options: AnswerOptions, phrase: str) -> None:
    with pytest.raises(OptionsError, match=phrase):
        options.validate()


def test_default_and_off_options_are_valid() -> None:
    assert AnswerOptions().validate().s == 8
    AnswerOptions(pgdfc_mode="off", s=0).validate()


@pytest.mark.parametrize(
    ("sent", "phrase"),
    [
        ({"s": None}, "S .* must be a whole number, not None"),
        ({"s": float("nan")}, "S .* must be a whole number, not nan"),
        ({"s": float("inf")}, "S .* must be a whole number, not inf"),
        ({"s": 2.5}, "S .* must be a whole number, not 2.5"),
        ({"max_new_tokens": float("inf")}, "max_new_tokens must be a whole number, not inf"),
        ({"max_new_tokens": float("nan")}, "max_new_tokens must be a whole number"),
        ({"max_new_tokens": "many"}, "max_new_tokens must be a whole number, not 'many'"),
        ({"temperature": "hot"}, "temperature must be a finite number, not 'hot'"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"pgdfc_mode": "z" * 100_000}, "PGDFC mode 'zzz"),
    ],
)
def test_options_as_sent_by_a_form_or_an_api_call_get_sentences(sent: dict, phrase: str) -> None:
    with pytest.raises(OptionsError, match=phrase) as info:
        AnswerOptions.from_form(**sent)
    assert len(info.value.message) < 200  # echoes are cut


def test_options_from_a_form_take_whole_floats_as_whole_numbers() -> None:
    options = AnswerOptions.from_form(s=8.0, max_new_tokens=256.0, temperature=0.5)
    assert (options.s, options.max_new_tokens, options.temperature) == (8, 256, 0.5)
    assert isinstance(options.s, int) and isinstance(options.max_new_tokens, int)


def test_place_mask_crops_padding_and_lands_on_level0() -> None:
    frame = ThumbFrame(l0_width=2000, l0_height=1000, side=128)  # content 128×64, pad_y 32
    logits = torch.full((32, 32), -5.0)
    logits[8:24, 0:16] = 5.0  # thumb rows 32..96 are the slide; left half of it
    result = place_mask(logits, frame)
    assert result.bitmap.dtype == bool and result.bitmap.shape == (16, 32)
    assert result.l0_rect == L0Rect(0, 0, 2000, 1000)
    assert result.bitmap[:, :16].all() and not result.bitmap[:, 16:].any()


def test_region_map_marks_the_rectangle_in_the_thumb_frame() -> None:
    frame = ThumbFrame(l0_width=2000, l0_height=1000, side=100)  # scale 0.05, pad_y 25
    region = region_map(L0Rect(0, 0, 1000, 1000), frame)
    assert region.shape == (1, 1, 100, 100)
    assert region[0, 0, 25:75, 0:50].min() == 1 and region.sum() == 50 * 50


def test_bitmap_rle() -> None:
    assert bitmap_rle(np.array([[True, True], [False, True]])) == [0, 2, 1, 1]
    assert bitmap_rle(np.array([[False, False, True]])) == [2, 1]


def test_thumbnail_cache_is_lru_and_forgets_collected_slides() -> None:
    class Anonymous:
        pass

    cache = ThumbnailCache(max_entries=2)
    a, b, c = Anonymous(), Anonymous(), Anonymous()
    for s in (a, b):
        cache.put(s, 64, "features")  # type: ignore[arg-type]
    assert cache.get(a, 64) == "features" and cache.get(a, 32) is None
    cache.put(c, 64, "features")  # type: ignore[arg-type]
    assert cache.get(b, 64) is None and cache.get(a, 64) is not None  # b was least recent
    del a
    import gc

    gc.collect()
    assert len(cache) == 1


def test_clean_text_defuses_placeholders() -> None:
    assert clean_text("is <image> a <mask>?") == "is [image] a [mask]?"


# --- the engine on tiny -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return tiny_model()


@pytest.fixture(scope="module")
def engine(tiny: tuple) -> Engine:
    """One engine for the module: its thumbnail cache makes later questions cheap, as in use."""
    model, tokenizer = tiny
    return Engine(model, tokenizer, model_id="tiny", revision=None, demo=True)


def _open_slide():
    open_slide = getattr(pytest.importorskip("omnipath.slide"), "open_slide", None)
    if open_slide is None:
        pytest.skip("the slide layer (omnipath.slide.open_slide) is not in this checkout yet")
    return open_slide


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    open_slide = _open_slide()
    path = tmp_path_factory.mktemp("slides") / "slide.png"
    _write_slide(path)
    with open_slide(path) as opened:
        yield opened


def _run(engine: Engine, slide, question="Where is the tumor?", history=None, **kwargs):
    stop = kwargs.pop("stop", None)
    region = kwargs.pop("l0_region", None)
    options = AnswerOptions(**{"s": 4, "max_new_tokens": 6, **kwargs})
    items = list(
        engine.answer(slide, history or [], question, options, stop=stop, l0_region=region)
    )
    return items[:-1], items[-1]


def test_streams_text_then_one_answer(engine: Engine, slide) -> None:
    deltas, answer = _run(engine, slide)
    assert isinstance(answer, Answer)
    assert all(isinstance(d, str) and d for d in deltas)
    assert "".join(deltas) == answer.text
    assert set(answer.timings) >= {
        "thumbnail",
        "vision",
        "probe",
        "detail_read",
        "detail_encode",
        "prefill",
        "decode",
    }
    assert answer.tokens["detail_patches"] == 4 and [r.rank for r in answer.regions] == [1, 2, 3, 4]
    per_patch = engine.model.config.pgdfc_config.tokens_per_patch
    assert answer.tokens["detail"] > 4 * per_patch  # image tokens plus position texts
    assert answer.tokens["generated"] <= 6
    assert answer.model_id == "tiny" and not answer.stopped and not answer.timed_out
    json.dumps(answer.to_dict())


def test_regions_lie_on_tissue_never_background(engine: Engine, slide) -> None:
    _, answer = _run(engine, slide, s=8)
    assert len(answer.regions) == 8
    for region in answer.regions:
        rect = region.l0_rect
        assert 0 <= rect.x and rect.x1 <= SLIDE_W and 0 <= rect.y and rect.y1 <= SLIDE_H
        centre_x = rect.x + rect.w / 2
        assert centre_x < TISSUE_RIGHT + rect.w / 2  # the cell itself overlaps the tissue


def test_greedy_is_deterministic_and_sampling_seeded(engine: Engine, slide) -> None:
    assert _run(engine, slide)[1].text == _run(engine, slide)[1].text
    one = _run(engine, slide, temperature=1.0, seed=1)[1].text
    assert one == _run(engine, slide, temperature=1.0, seed=1)[1].text
    assert one != _run(engine, slide, temperature=1.0, seed=2)[1].text


def test_random_mode_is_seeded_and_differs_from_attention(engine: Engine, slide) -> None:
    rects = lambda a: [r.l0_rect for r in a.regions]  # noqa: E731
    attention = _run(engine, slide, s=6)[1]
    random_a = _run(engine, slide, s=6, pgdfc_mode="random", seed=7)[1]
    random_b = _run(engine, slide, s=6, pgdfc_mode="random", seed=7)[1]
    assert rects(random_a) == rects(random_b)
    assert set(rects(random_a)) != set(rects(attention))
    assert all(np.isfinite(r.score) for r in random_a.regions)


def test_off_mode_reads_nothing(engine: Engine, slide) -> None:
    _, off = _run(engine, slide, pgdfc_mode="off", s=0)
    _, on = _run(engine, slide)
    assert off.regions == [] and off.tokens["detail"] == 0
    assert off.timings["probe"] == 0 and off.timings["detail_read"] == 0
    assert off.tokens["prompt"] < on.tokens["prompt"]


def test_thumbnail_features_cached_per_slide(engine: Engine, slide) -> None:
    engine.thumbs.clear()
    first = _run(engine, slide)[1]
    second = _run(engine, slide)[1]
    assert first.tokens["thumbnail_cached"] == 0 and second.tokens["thumbnail_cached"] == 1
    assert second.timings["vision"] == 0.0


def test_caches_follow_the_slide_id_given_not_the_object(engine: Engine, tmp_path) -> None:
    """Two openings of one slide under its id share the thumbnail and detail patches; the
    same file under another id does not (the engine never guesses a key from the file)."""
    open_slide = _open_slide()
    path = tmp_path / "same.png"
    _write_slide(path)
    options = AnswerOptions(s=2, max_new_tokens=2)
    engine.thumbs.clear()
    runs = []
    for slide_id in ("a" * 64, "a" * 64, "b" * 64):
        with open_slide(path) as opened:
            *_, answer = engine.answer(opened, [], "Where?", options, slide_id=slide_id)
            runs.append(answer.tokens)
    assert [t["thumbnail_cached"] for t in runs] == [0, 1, 0]
    assert [t["detail_patches_cached"] for t in runs] == [0, 2, 0]


def test_multi_turn_history_and_typed_placeholders(engine: Engine, slide) -> None:
    history = [
        {"role": "user", "content": "What does this slide show?"},
        {"role": "assistant", "content": "A section of tissue <mask>."},
    ]
    _, answer = _run(engine, slide, question="Is there <image> necrosis?", history=history)
    assert answer.tokens["history_messages"] == 2
    _, alone = _run(engine, slide, question="Is there <image> necrosis?")
    assert answer.tokens["prompt"] > alone.tokens["prompt"]


def test_prompt_layout_image_first_turn_only(tiny: tuple) -> None:
    model, tokenizer = tiny
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}]
    prompt = build_prompt(
        tokenizer,
        history,
        "Where?",
        image_token_id=model.config.image_token_id,
        num_image_tokens=model.num_image_tokens,
        mask_token_id=model.config.mask_token_id,
        region_mask=True,
    )
    ids = prompt.prefix_ids
    assert ids.count(model.config.image_token_id) == model.num_image_tokens
    assert ids.count(model.config.mask_token_id) == 1 and prompt.mask_positions
    assert prompt.image_positions == list(
        range(prompt.image_positions[0], prompt.image_positions[0] + model.num_image_tokens)
    )
    text = tokenizer.decode(ids)
    assert text.index("Hello") > text.index("<image>") and text.rstrip().endswith("Where?")
    assert "ASSISTANT:" in tokenizer.decode(prompt.suffix_ids)


def test_stop_event_and_timeout(engine: Engine, slide) -> None:
    stop = threading.Event()
    stream = engine.answer(
        slide, [], "Describe the slide.", AnswerOptions(s=2, max_new_tokens=40), stop=stop
    )
    items = []
    for item in stream:
        items.append(item)
        stop.set()  # pressed after the first delta
    answer = items[-1]
    assert answer.stopped and answer.tokens["generated"] < 40
    assert len(items) <= 3
    _, late = _run(engine, slide, max_new_tokens=40, timeout_s=1e-6)
    assert late.timed_out and late.text == "" and late.tokens["generated"] == 0
    assert late.tokens["prompt"] == 0 and "detail_patches" in late.tokens


def test_masks_and_boxes_from_the_generated_text(engine: Engine, slide, monkeypatch) -> None:
    tokenizer = engine.tokenizer
    mask_id = engine.model.config.mask_token_id
    script = (
        tokenizer("lesion: [0.1, 0.2, 0.3, 0.4] ", add_special_tokens=False)["input_ids"]
        + [mask_id]
        + tokenizer(" and ", add_special_tokens=False)["input_ids"]
        + [mask_id, tokenizer.eos_token_id]
    )
    script_the_head(engine, script, monkeypatch)
    deltas, answer = _run(engine, slide, max_new_tokens=64)
    assert answer.text.count("<mask>") == 2 and "".join(deltas) == answer.text
    assert len(answer.masks) == 2 and answer.tokens["masks"] == 2
    for mask in answer.masks:
        assert isinstance(mask, MaskResult) and mask.bitmap.dtype == bool
        assert mask.l0_rect.x >= 0 and mask.l0_rect.x1 <= SLIDE_W and mask.l0_rect.y1 <= SLIDE_H
    (box,) = answer.boxes
    assert box.label == "lesion" and box.l0_rect == L0Rect(160, 200, 320, 200)


def test_region_question_uses_the_mask_encoder_or_words(engine: Engine, slide, monkeypatch) -> None:
    calls = []
    original = engine.model.encode_masks
    monkeypatch.setattr(engine.model, "encode_masks", lambda m: calls.append(m) or original(m))
    region = L0Rect(100, 100, 400, 300)
    _, plain = _run(engine, slide)
    _, pointed = _run(engine, slide, l0_region=region)
    assert len(calls) == 1 and calls[0].shape[-1] == engine.model.thumb_side
    assert pointed.tokens["prompt"] > plain.tokens["prompt"]
    monkeypatch.setattr(engine.model, "supports_masks", False, raising=False)
    _, worded = _run(engine, slide, l0_region=region)
    assert len(calls) == 1 and worded.tokens["prompt"] > pointed.tokens["prompt"]
    with pytest.raises(OptionsError, match="outside the slide"):
        _run(engine, slide, l0_region=L0Rect(SLIDE_W + 10, 0, 50, 50))


@pytest.mark.parametrize(
    ("question", "kwargs", "phrase"),
    [
        ("   ", {}, "question is empty"),
        ("Where?", {"s": 0}, "at least one detail patch"),
        ("Where?", {"max_new_tokens": 10**6}, "max_new_tokens"),
        ("Where?", {"pgdfc_mode": "everything"}, "not known"),
    ],
)
def test_bad_requests_fail_at_call_time(engine: Engine, slide, question, kwargs, phrase) -> None:
    with pytest.raises(OptionsError, match=phrase):
        engine.answer(slide, [], question, AnswerOptions(**kwargs))
    with pytest.raises(OptionsError, match="role"):
        engine.answer(slide, [{"content": "hi"}], "Where?", AnswerOptions())


def test_s_larger_than_the_tissue_cells(engine: Engine, tmp_path) -> None:
    open_slide = _open_slide()
    path = tmp_path / "sparse.png"
    _write_slide(path, tissue_right=120)  # a thin strip of tissue
    with open_slide(path) as sparse:
        # refused when the answer is asked for, before any model work or anything is streamed
        with pytest.raises(OptionsError, match="hold tissue"):
            engine.answer(sparse, [], "Where?", AnswerOptions(s=60))
        assert engine.thumbs.get(sparse, engine.model.thumb_side) is None
        # with the vision features cached, the check still comes first
        _run(engine, sparse, pgdfc_mode="off", s=0)
        with pytest.raises(OptionsError, match="hold tissue"):
            engine.answer(sparse, [], "Where?", AnswerOptions(s=60))


def test_token_budget_drops_lowest_patches_then_refuses(engine: Engine, slide, monkeypatch) -> None:
    config = engine.model.language_model.config
    _, full = _run(engine, slide, s=4)
    need = full.tokens["prompt"] + 6  # prompt with all four patches + max_new_tokens
    monkeypatch.setattr(config, "max_position_embeddings", need - 1)
    _, trimmed = _run(engine, slide, s=4)
    assert trimmed.tokens["detail_patches"] == 3 and trimmed.tokens["detail_patches_dropped"] == 1
    assert trimmed.regions == full.regions[:3]  # the lowest-scoring patch was dropped
    monkeypatch.setattr(config, "max_position_embeddings", 20)
    with pytest.raises(TokenBudgetError, match="context of 20"):
        _run(engine, slide)


def test_out_of_memory_is_reported_and_the_next_request_works(
    engine: Engine, slide, monkeypatch
) -> None:
    original = engine.model.encode_images

    def exhausted(images):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine.model, "encode_images", exhausted)
    engine.thumbs.clear()
    with pytest.raises(DeviceOutOfMemoryError, match="ran out of memory") as info:
        _run(engine, slide)
    assert "20.00 GiB" in (info.value.detail or "")
    monkeypatch.setattr(engine.model, "encode_images", original)
    assert isinstance(_run(engine, slide)[1], Answer)


def test_engine_info(engine: Engine) -> None:
    info = engine.info
    assert info["model_id"] == "tiny" and info["device"] == "cpu" and info["demo"] is True
    assert info["dtype"] == "float32" and info["supports_masks"] is True


def test_stock_llava_through_the_adapter_gets_pgdfc_and_no_masks(tiny: tuple, slide) -> None:
    _, tokenizer = tiny
    engine = Engine(
        tiny_llava_adapter(), tokenizer, model_id="llava-tiny", revision="r1", demo=False
    )
    assert engine.info["supports_masks"] is False
    deltas, answer = _run(engine, slide, s=3)
    assert "".join(deltas) == answer.text and len(answer.regions) == 3
    assert answer.revision == "r1" and answer.tokens["detail_patches"] == 3
    for region in answer.regions:  # PGDFC reads tissue on LLaVA too, without training
        assert region.l0_rect.x < TISSUE_RIGHT
    _, worded = _run(engine, slide, s=3, l0_region=L0Rect(100, 100, 400, 300))
    assert worded.tokens["prompt"] > answer.tokens["prompt"]  # the region, as words


def test_synthetic_pyramidal_slide_read_at_the_detail_magnification(
    engine: Engine, tmp_path
) -> None:
    """A generated 40× (0.25 µm/px) pyramidal TIFF: each detail patch is the encoder's input
    at 20×, i.e. detail_side × 2 level-0 pixels around a tissue cell's centre (detail_side:
    the encoder's input at the detail scales, one base tile by default)."""
    from omnipath.slide import open_slide
    from omnipath.synth import write_synthetic_slide

    synthetic = write_synthetic_slide(tmp_path / "synthetic.tiff", 4096, 3072, seed=1, n_lesions=2)
    with open_slide(synthetic.path) as opened:
        assert opened.info.mpp_x == pytest.approx(0.25)
        _, answer = _run(engine, opened, s=4)
        frame = ThumbFrame(4096, 3072, engine.model.thumb_side)
        tissue = opened.tissue_mask(64, 64)
    window = engine.model.detail_side * (10.0 / 20.0) / 0.25
    assert len(answer.regions) == 4
    for region in answer.regions:
        rect = region.l0_rect
        assert rect.w <= window and rect.h <= window
        assert max(rect.w, rect.h) == pytest.approx(window, abs=1)  # clipped on one side at most
        row, col = frame.grid_cell_of_l0(
            rect.x + rect.w / 2, rect.y + rect.h / 2, engine.model.grid
        )
        assert 0 <= row < engine.model.grid and 0 <= col < engine.model.grid
        # the region shows tissue (the synthetic slide's own tissue map, 64×64 over the slide)
        r0, r1 = rect.y * 64 // 3072, max(rect.y * 64 // 3072 + 1, rect.y1 * 64 // 3072)
        c0, c1 = rect.x * 64 // 4096, max(rect.x * 64 // 4096 + 1, rect.x1 * 64 // 4096)
        assert tissue[r0:r1, c0:c1].max() > 0


# --- detail cache, read overlap, detail scales ------------------------------------------------


def test_detail_cache_hits_on_a_repeated_question_with_identical_answers(
    tiny: tuple, slide
) -> None:
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, model_id="tiny", revision=None, demo=True)
    first = _run(engine, slide, s=4)[1]
    assert first.tokens["detail_patches_cached"] == 0 and len(engine.details) == 4
    second = _run(engine, slide, s=4)[1]
    assert second.tokens["detail_patches_cached"] == 4
    assert second.timings["detail_read"] == 0.0 and second.timings["detail_encode"] == 0.0
    assert second.text == first.text and second.regions == first.regions
    # a different S reuses the cells it shares and reads only the new ones
    more = _run(engine, slide, s=6)[1]
    assert more.tokens["detail_patches_cached"] == 4 and len(engine.details) == 6
    uncached = Engine(
        model, tokenizer, model_id="tiny", revision=None, demo=True, detail_cache_size=0
    )
    fresh = _run(uncached, slide, s=6)[1]
    assert fresh.tokens["detail_patches_cached"] == 0 and len(uncached.details) == 0
    assert fresh.text == more.text and fresh.regions == more.regions


def test_detail_cache_is_lru_and_keyed_by_slide_and_rect(slide) -> None:
    from omnipath.engine.details import DetailCache

    cache = DetailCache(max_entries=2)
    keys = [cache.key(slide, L0Rect(i, 0, 64, 64), 32, 4) for i in range(3)]
    for i, key in enumerate(keys):
        cache.put(slide, key, torch.full((4, 8), float(i)))
    assert len(cache) == 2 and cache.get(keys[0]) is None
    assert cache.get(keys[2])[0, 0] == 2.0
    assert cache.key(slide, L0Rect(0, 0, 64, 64), 32, 4) != cache.key(
        slide, L0Rect(0, 0, 64, 64), 32, 9
    )


def test_the_probe_is_a_pre_pass_and_details_are_read_before_any_full_forward(
    tiny: tuple, slide, monkeypatch
) -> None:
    """Ψ from layer 0 alone: the detail reads start before any layer after the probed one
    runs; the only full forward is generate's prefill of [e_v, e_t, ê_v, ê_t]."""
    from omnipath import pgdfc

    model, tokenizer = tiny
    events: list[str] = []
    read = pgdfc.read_detail_patches

    def logged_read(*args, **kwargs):
        events.append("reads")
        return read(*args, **kwargs)

    monkeypatch.setattr(pgdfc, "read_detail_patches", logged_read)
    layers = model.language_model.get_decoder().layers
    hooks = [
        layers[0].mlp.register_forward_pre_hook(lambda m, a: events.append("layer 0 mlp")),
        layers[-1].register_forward_pre_hook(lambda m, a: events.append("last layer")),
    ]
    engine = Engine(model, tokenizer, model_id="tiny", revision=None, demo=True)
    try:
        _, answer = _run(engine, slide, s=5, max_new_tokens=3)
    finally:
        for hook in hooks:
            hook.remove()
    assert events[:3] == ["reads", "layer 0 mlp", "last layer"]
    assert answer.timings["probe"] > 0 and len(answer.regions) == 5


def test_detail_scale_factors_keep_the_token_count_and_encode_one_tile() -> None:
    """Detail patches at scale 1 only: one base tile per tower per patch (counted), the same
    P tokens per patch and projector layout as the full multi-scale stack."""
    from omnipath.model import OmniPathForConditionalGeneration, tiny_config

    torch.manual_seed(0)
    model = OmniPathForConditionalGeneration(tiny_config()).eval()
    assert model.config.pgdfc_config.detail_scale_factors is None  # default → [1]
    assert model.detail_side == model.config.vision_config.image_size
    tiles_seen: list[int] = []
    hooks = [
        tower.register_forward_pre_hook(lambda m, args: tiles_seen.append(args[0].shape[0]))
        for tower in model.vision.towers()
    ]
    patches = torch.rand(3, 3, model.detail_side, model.detail_side)
    with torch.no_grad():
        one_scale = model.encode_detail_patches(patches, 4)
        assert tiles_seen == [3, 3]  # S tiles per tower, one tower call each
        tiles_seen.clear()
        model.config.pgdfc_config.detail_scale_factors = [1, 2]
        full = model.encode_detail_patches(patches, 4)
        assert tiles_seen == [3, 12, 3, 12]  # scale 1 + scale 2 (2×2 tiles) per tower
        assert model.detail_side == 2 * model.config.vision_config.image_size
    for hook in hooks:
        hook.remove()
    assert one_scale.shape == full.shape == (3, 4, model.config.text_config.hidden_size)
    assert not torch.allclose(one_scale, full)  # really a different (cheaper) encoding
    # the scale-2 slots of a scale-1 encoding repeat the scale-1 map (nearest encoded scale)
    with torch.no_grad():
        fused = model.vision(patches, encode_scales=[1])
    half = fused.shape[1] // 4  # channels: (siglip k1, siglip k2, uni k1, uni k2)
    siglip = model.vision.siglip.channels
    assert torch.equal(fused[:, :siglip], fused[:, siglip : 2 * siglip])
    assert half > 0


def test_bad_detail_scale_factors_are_refused() -> None:
    from omnipath.model import tiny_config
    from omnipath.model.configuration import ModelInputError, OmniPathConfig

    config = tiny_config().to_dict()
    config["pgdfc_config"]["detail_scale_factors"] = [0]
    with pytest.raises(ModelInputError, match="detail_scale_factors"):
        OmniPathConfig(**config)
