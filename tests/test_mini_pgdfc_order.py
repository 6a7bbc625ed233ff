"""(slow) The shipped omnipath-mini on a synthetic slide with several lesions: PGDFC's S regions
are not in index (raster) order, and a follow-up segmentation question gets a mask."""

from __future__ import annotations

import pytest

from omnipath.mini.model import DEFAULT_WEIGHTS_DIR

pytestmark = pytest.mark.slow

S = 8


@pytest.fixture(scope="module")
def mini_engine():
    if not (DEFAULT_WEIGHTS_DIR / "adapter_model.safetensors").is_file():
        pytest.skip("omnipath-mini weights are not in this checkout")
    pytest.importorskip("gguf")
    from omnipath.engine import Engine
    from omnipath.mini.model import MINI_MODEL_ID, load_mini

    model, tokenizer = load_mini(DEFAULT_WEIGHTS_DIR)
    return Engine(model, tokenizer, model_id=MINI_MODEL_ID, revision=None, demo=True)


@pytest.fixture(scope="module")
def lesion_slide(tmp_path_factory):
    """A small synthetic slide with three lesions (the training slides' aspect, half size)."""
    from omnipath.synth import write_synthetic_slide

    path = tmp_path_factory.mktemp("mini_slides") / "lesions.tiff"
    truth = write_synthetic_slide(path, 2048, 1536, seed=7, n_lesions=3)
    assert len(truth.lesions) >= 2
    return truth


def _ask(engine, slide, question: str, history: list[dict] | None = None):
    from omnipath.engine import AnswerOptions

    options = AnswerOptions(pgdfc_mode="attention", s=S, max_new_tokens=48)
    answer = list(engine.answer(slide, history or [], question, options))[-1]
    assert answer.error is None, answer.error
    return answer


def _grid_cell(rect, frame, grid: int) -> tuple[int, int]:
    """The (row, col) of the thumb grid cell under a region's centre (a region is the read
    centred on its cell, clipped to the slide: its centre stays in the cell)."""
    x, y = frame.l0_to_thumb(rect.x + rect.w / 2, rect.y + rect.h / 2)
    cell = frame.side / grid
    return int(y // cell), int(x // cell)


def test_pgdfc_regions_are_not_in_raster_order(mini_engine, lesion_slide) -> None:
    from omnipath.coords import ThumbFrame
    from omnipath.slide import open_slide

    model = mini_engine.model
    frame = ThumbFrame(lesion_slide.width, lesion_slide.height, int(model.thumb_side))
    with open_slide(lesion_slide.path) as slide:
        answer = _ask(mini_engine, slide, "What is the grade of the lesion?")
    assert [r.rank for r in answer.regions] == list(range(1, S + 1))
    cells = [_grid_cell(r.l0_rect, frame, model.grid) for r in answer.regions]
    assert len(set(cells)) == S
    assert cells != sorted(cells), f"the {S} regions lie in raster order: {cells}"


def test_a_follow_up_segmentation_question_gets_a_mask(mini_engine, lesion_slide) -> None:
    from omnipath.slide import open_slide
    from omnipath.train.followups import FOLLOWUP_TURNS

    (_, count_question, _), (_, segment_question, form) = FOLLOWUP_TURNS[:2]
    assert form == "mask"
    with open_slide(lesion_slide.path) as slide:
        first = _ask(mini_engine, slide, count_question)
        history = [
            {"role": "user", "content": count_question},
            {"role": "assistant", "content": first.text},
        ]
        answer = _ask(mini_engine, slide, segment_question, history)
    assert answer.masks, f"no mask in {answer.text!r} (after {first.text!r})"
