"""bench/ablation.py's scoring: answer forms, the numbers of a run, the target table, the
follow-up conversation (on the tiny model) and the command line's checks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from omnipath.boxes import Box
from omnipath.coords import L0Rect, RelBox
from omnipath.engine import Answer, MaskResult
from omnipath.train.followups import FOLLOWUP_FORMS, FOLLOWUP_TURNS

BENCH = str(Path(__file__).resolve().parents[1] / "bench")


@pytest.fixture(scope="module")
def bench():
    """(ablation, ablation_scores) imported from bench/."""
    sys.path.insert(0, BENCH)
    try:
        import ablation
        import ablation_scores
    finally:
        sys.path.remove(BENCH)
    return ablation, ablation_scores


def _box() -> Box:
    return Box(RelBox(0.1, 0.1, 0.2, 0.2), L0Rect(10, 10, 10, 10), "carcinoma")


def test_answer_forms(bench) -> None:
    _, scores = bench
    mask = MaskResult(np.ones((2, 2), bool), L0Rect(0, 0, 4, 4))
    assert scores.has_form("number", Answer("There are 2 lesions."))
    assert scores.has_form("number", Answer("There is no lesion on this slide."))
    assert not scores.has_form("number", Answer("Here it is:"))
    assert scores.has_form("grade", Answer("Grade 3."))
    assert not scores.has_form("grade", Answer("There are 3 lesions."))
    assert scores.has_form("mask", Answer("Here it is:", masks=[mask]))
    assert not scores.has_form("mask", Answer("There are 3 lesions."))
    assert scores.has_form("box", Answer("carcinoma: [0.1, 0.1, 0.2, 0.2].", boxes=[_box()]))
    assert not scores.has_form("box", Answer("carcinoma: somewhere."))
    assert set(FOLLOWUP_FORMS) == {"number", "mask", "grade", "box"}
    with pytest.raises(ValueError, match="unknown answer form"):
        scores.has_form("poem", Answer("x"))


def _raw(followups: list[dict]) -> dict:
    def mode(correct, asked, grade_correct, grade_asked, tiles, on):
        return {
            "correct": correct,
            "asked": asked,
            "grade_correct": grade_correct,
            "grade_asked": grade_asked,
            "tiles": tiles,
            "tiles_on_lesion": on,
        }

    return {
        "modes": {
            "off": mode(5, 10, 2, 5, 0, 0),
            "random": mode(6, 10, 3, 5, 40, 4),
            "attention": mode(9, 10, 4, 5, 40, 24),
        },
        "boxes": {"tp": 2, "pred": 4, "gold": 4, "ious": [0.6, 0.7, 0.1, 0.2]},
        "masks": {"dice": [0.5, 0.7], "iou": [0.4, 0.6]},
        "followups": {"turns": followups},
    }


def _turns(oks: list[bool], correct: bool) -> list[dict]:
    return [
        {"slide": "s", "turn": name, "form": form, "ok": ok, "correct": correct if i == 0 else None}
        for i, ((name, _, form), ok) in enumerate(zip(FOLLOWUP_TURNS, oks, strict=True))
    ]


def test_summary_and_the_target_table(bench) -> None:
    _, scores = bench
    raw = _raw(_turns([True, False, True, True], True) + _turns([True, True, True, True], False))
    summary = scores.summarise(raw)
    assert summary["grade_off"] == 40.0 and summary["grade_attention"] == 80.0
    assert summary["accuracy"] == {"off": 50.0, "random": 60.0, "attention": 90.0}
    assert summary["tiles_on_lesion"] == {"random": 10.0, "attention": 60.0}
    assert summary["lesion_ratio"] == pytest.approx(6.0)
    assert summary["box_f1"] == pytest.approx(0.5) and summary["box_mean_iou"] == pytest.approx(0.4)
    assert summary["mask_dice"] == pytest.approx(0.6)
    assert summary["followup_form"] == 87.5
    assert summary["followup_per_form"]["mask"] == {"hits": 1, "turns": 2}
    assert summary["followup_count_correct"] == 50.0
    assert scores.targets_met(summary) == {
        "grade_off": True,  # 40 ≤ 45
        "grade_random": True,  # 60 ≤ 60
        "grade_attention": True,  # 80 ≥ 75
        "lesion_ratio": True,
        "box_f1": True,
        "mask_dice": True,
        "followup_form": False,  # 87.5 < 90
    }
    table = scores.target_table(raw, summary)
    lines = table.splitlines()
    assert lines[:2] == ["| measure | value | target | met |", "|---|---|---|---|"]
    assert "| grade accuracy, no PGDFC (thumbnail) | 40.0 % (2/5) | ≤ 45 % | yes |" in lines
    assert "| grade accuracy, PGDFC | 80.0 % (4/5) | ≥ 75 % | yes |" in lines
    assert "| accuracy (grade, kind, count), random tiles | 60.0 % (6/10) | – | – |" in lines
    assert (
        "| tiles on a lesion, PGDFC against random tiles | 60.0 % vs 10.0 % = 6.0× | ≥ 5× | yes |"
        in lines
    )
    assert "| box F1 at IoU ≥ 0.5 (mean best IoU), PGDFC | 0.500 (0.400; 4 gold boxes) |" in table
    assert scores.plural(1, "gold box", "gold boxes") == "1 gold box"
    assert "| mask Dice (IoU), PGDFC | 0.600 (0.500; 2 masks) | ≥ 0.6 | yes |" in lines
    assert (
        "| follow-ups answered in the requested form | 87.5 % (7/8: number 2/2, mask 1/2, "
        "grade 2/2, box 2/2) | ≥ 90 % | no |" in lines
    )
    assert "| follow-up count right | 50.0 % (1/2) | – | – |" in lines


def test_nothing_asked_is_not_applicable_not_zero(bench) -> None:
    _, scores = bench
    raw = _raw([])
    raw["modes"]["random"]["tiles_on_lesion"] = 0
    raw["boxes"] = {"tp": 0, "pred": 0, "gold": 0, "ious": []}
    raw["masks"] = {"dice": [], "iou": []}
    summary = scores.summarise(raw)
    met = scores.targets_met(summary)
    assert summary["lesion_ratio"] is None and met["lesion_ratio"] is None
    assert summary["box_f1"] is None and met["mask_dice"] is None and met["followup_form"] is None
    table = scores.target_table(raw, summary)
    assert "| follow-ups answered in the requested form | n/a (0/0) | ≥ 90 % | n/a |" in table
    assert "| 60.0 % vs 0.0 % = n/a | ≥ 5× | n/a |" in table
    assert "| box F1 at IoU ≥ 0.5 (mean best IoU), PGDFC | n/a (n/a; 0 gold boxes) |" in table
    assert "| mask Dice (IoU), PGDFC | n/a (n/a; 0 masks) | ≥ 0.6 | n/a |" in table


def test_box_matching(bench) -> None:
    _, scores = bench
    gold = [(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)]
    predicted = [(0.0, 0.0, 0.5, 0.5), (0.0, 0.0, 0.45, 0.5), (0.9, 0.9, 1.0, 1.0)]
    tp, n_pred, n_gold, best = scores.box_scores(gold, predicted)
    assert (tp, n_pred, n_gold) == (1, 3, 2)  # one prediction per gold box
    assert best == pytest.approx([1.0, 0.04])


def test_followup_conversation_on_the_tiny_model(bench, tmp_path) -> None:
    """Four turns per slide, in order, each after the earlier questions and answers."""
    ablation, _ = bench
    from omnipath.engine import Engine
    from omnipath.synth import write_synthetic_slide
    from tests.engine_models import tiny_model

    (tmp_path / "slides").mkdir()
    write_synthetic_slide(tmp_path / "slides" / "slide000.tiff", 768, 512, seed=3, n_lesions=2)
    model, tokenizer = tiny_model()
    engine = Engine(model, tokenizer, model_id="tiny", revision=None, demo=True)
    asked = []
    answer = engine.answer

    def recorded(slide, history, question, options):
        asked.append((len(history), question, options.pgdfc_mode, options.s))
        return answer(slide, history, question, options)

    engine.answer = recorded
    turns = ablation.run_followups(engine, tmp_path, ["slide000"], s=2, max_new_tokens=4)["turns"]
    assert [(t["turn"], t["form"]) for t in turns] == [(n, f) for n, _, f in FOLLOWUP_TURNS]
    assert asked == [(2 * i, q, "attention", 2) for i, (_, q, _) in enumerate(FOLLOWUP_TURNS)]
    assert all(isinstance(t["ok"], bool) and t["slide"] == "slide000" for t in turns)
    assert isinstance(turns[0]["correct"], bool)
    assert all(t["correct"] is None for t in turns[1:])


def test_command_line_checks_the_data_and_the_card_before_loading(bench, tmp_path, capsys):
    ablation, _ = bench
    with pytest.raises(SystemExit):
        ablation.main(["--data", str(tmp_path / "nowhere")])
    assert "has no manifest.json" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "test.json").write_text("[]")
    with pytest.raises(SystemExit):
        ablation.main(["--data", str(tmp_path), "--also", str(tmp_path)])
    assert "has no train.json" in capsys.readouterr().err  # --also asks every split
    with pytest.raises(SystemExit):
        ablation.main(["--data", str(tmp_path), "--card", str(tmp_path / "README.md")])
    assert "no model card at" in capsys.readouterr().err
