"""The model card's Evaluation section: written between markers by bench/ablation.py --card."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from omnipath.mini.card import (
    EVALUATION_END,
    EVALUATION_START,
    write_evaluation,
    write_model_card,
)
from omnipath.mini.towers import TowerReport
from omnipath.train.trainer import TrainConfig


def _card(tmp_path):
    manifest = {
        "config": {
            "n_slides": 4,
            "slide_width": 1024,
            "slide_height": 768,
            "mpp": 0.25,
            "max_lesions": 3,
            "seed": 5,
            "tasks": ["grade", "count"],
            "detail_magnification": 20.0,
            "box_decimals": 2,
        },
        "counts": {"train": {"grade": 3, "count": 2}, "test": {"grade": 1, "count": 1}},
    }
    towers = TowerReport(
        steps=5,
        seconds=30.0,
        first_loss=3.0,
        last_loss=1.0,
        probe_accuracy=0.93,
        probe_patches=100,
        patches=400,
    )
    stage = TrainConfig(output_dir=str(tmp_path), extra={"stage": "stage2", "records": 7})
    result = SimpleNamespace(steps=10, losses=[2.0, 1.0])
    return write_model_card(
        tmp_path,
        data_manifest=manifest,
        towers=towers,
        stages=[(stage, result, 60.0)],
        weights_bytes=2**20,
        total_seconds=120.0,
    )


def test_the_evaluation_section_is_replaced_between_its_markers(tmp_path) -> None:
    path = _card(tmp_path)
    before = path.read_text()
    assert before.count(EVALUATION_START) == 1 and before.count(EVALUATION_END) == 1
    assert "Not measured yet" in before
    write_evaluation(path, "| measure | value |\n|---|---|\n| grade | 80.0 % |\n")
    after = path.read_text()
    assert "Not measured yet" not in after
    assert f"{EVALUATION_START}\n| measure | value |" in after
    assert "| grade | 80.0 % |\n" + EVALUATION_END in after
    head, tail = before.split(EVALUATION_START)[0], before.split(EVALUATION_END)[1]
    assert after.startswith(head) and after.endswith(tail)  # the other sections are kept
    assert "## Limitations" in tail and after.count("## Evaluation") == 1
    write_evaluation(path, "second run")  # rewriting replaces, never stacks
    again = path.read_text()
    assert "80.0 %" not in again and again.count(EVALUATION_START) == 1
    assert again == head + f"{EVALUATION_START}\nsecond run\n{EVALUATION_END}" + tail


def test_a_card_without_markers_gets_the_section_appended(tmp_path) -> None:
    path = tmp_path / "README.md"
    path.write_text("# a card\n\nSome text.\n\n")
    write_evaluation(path, "the table")
    assert path.read_text() == (
        f"# a card\n\nSome text.\n\n## Evaluation\n\n{EVALUATION_START}\nthe table\n"
        f"{EVALUATION_END}\n"
    )


@pytest.mark.parametrize(
    "text",
    [
        f"# card\n{EVALUATION_START}\nno end\n",
        f"# card\nno start\n{EVALUATION_END}\n",
        f"# card\n{EVALUATION_END}\nswapped\n{EVALUATION_START}\n",
    ],
)
def test_broken_markers_are_refused_and_the_card_is_kept(tmp_path, text: str) -> None:
    path = tmp_path / "README.md"
    path.write_text(text)
    with pytest.raises(ValueError, match="broken Evaluation section"):
        write_evaluation(path, "the table")
    assert path.read_text() == text
