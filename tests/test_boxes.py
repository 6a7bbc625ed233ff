"""Box parsing: tolerant of malformed text, placed on level 0 in the right frame."""

from __future__ import annotations

import logging

import pytest

from omnipath.boxes import boxes_from_text, parse_box_text
from omnipath.coords import L0Rect, ThumbFrame


def test_square_and_round_brackets_with_labels() -> None:
    boxes = parse_box_text("tumour: [0.12, 0.30, 0.25, 0.41] and necrosis (0.5,0.5,0.6,0.7).")
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes] == [
        (0.12, 0.30, 0.25, 0.41),
        (0.5, 0.5, 0.6, 0.7),
    ]
    assert [b.label for b in boxes] == ["tumour", "necrosis"]


def test_label_from_a_sentence_and_space_separated_numbers() -> None:
    (box,) = parse_box_text("There is a tumor at [0.1 0.2 0.3 0.4]")
    assert box.label == "tumor"
    assert (box.x0, box.y0, box.x1, box.y1) == (0.1, 0.2, 0.3, 0.4)


def test_unlabelled_box_has_empty_label() -> None:
    (box,) = parse_box_text("[0.1, 0.2, 0.3, 0.4]")
    assert box.label == ""


def test_swapped_corners_are_ordered_and_small_overshoot_clipped() -> None:
    (swapped,) = parse_box_text("[0.3,0.4,0.1,0.2]")
    assert (swapped.x0, swapped.y0, swapped.x1, swapped.y1) == (0.1, 0.2, 0.3, 0.4)
    (clipped,) = parse_box_text("[-0.01, 0.2, 1.02, 0.4]")
    assert (clipped.x0, clipped.x1) == (0.0, 1.0)


@pytest.mark.parametrize(
    "text",
    [
        "[0.1, 0.2, 0.3]",  # three numbers
        "[1.5, 0.2, 0.3, 0.4]",  # far out of range (not a relative box)
        "[0.1, 0.2, 0.1, 0.5]",  # zero width
        "(0.1,0.2,0.3,0.4]",  # mismatched brackets
        "[abc, def]",
        "[0.1, 0.2, 0.3, 0.4",  # unclosed
        "",
    ],
)
def test_malformed_boxes_are_logged_and_skipped(
    text: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="omnipath.boxes"):
        assert parse_box_text(text) == []
    if any(ch.isdigit() for ch in text):
        assert "skipped" in caplog.text


def test_good_box_survives_next_to_a_bad_one() -> None:
    boxes = parse_box_text("bad [2, 3, 4, 5]; good: [0.1, 0.1, 0.2, 0.2]")
    assert len(boxes) == 1 and boxes[0].label == "good"


def test_non_text_input_gives_no_boxes() -> None:
    assert parse_box_text(None) == []  # type: ignore[arg-type]


def test_slide_frame_boxes_land_on_level0() -> None:
    (box,) = boxes_from_text("lesion [0.25, 0.5, 0.5, 1.0]", l0_width=60000, l0_height=40000)
    assert box.l0_rect == L0Rect(15000, 20000, 15000, 20000)
    assert box.rel.x0 == 0.25 and box.label == "lesion"
    assert box.to_dict()["l0_rect"] == {"x": 15000, "y": 20000, "w": 15000, "h": 20000}


def test_square_frame_boxes_are_unpadded() -> None:
    # 2:1 slide in a 100 px square: content 100×50, padding 25 px above and below
    frame = ThumbFrame(l0_width=2000, l0_height=1000, side=100)
    (box,) = boxes_from_text(
        "[0.0, 0.25, 0.5, 0.75]", l0_width=2000, l0_height=1000, frame="square", thumb_frame=frame
    )
    assert box.l0_rect == L0Rect(0, 0, 1000, 1000)
    assert box.rel.y0 == 0.0 and box.rel.y1 == 1.0
    # entirely in the top padding: skipped, not raised
    assert (
        boxes_from_text(
            "[0.1, 0.0, 0.2, 0.2]", l0_width=2000, l0_height=1000, frame="square", thumb_frame=frame
        )
        == []
    )
