"""The multi-turn follow-up conversation of omnipath-mini: trained on, and measured.

One conversation about one slide asks, in this order (issue 10's "count, then segment, then
grade, then box the second one"):

    1. count    "How many lesions are on this slide?"   → "There are 2 lesions."
    2. segment  "Segment the largest one."              → "Here it is: <mask>"
    3. grade    "What is its grade?"                     → "Grade 2."
    4. box      "Box the second one."                    → "carcinoma: [x0, y0, x1, y1]."

"The largest" is the lesion with the most label-map pixels; "the second one" counts lesions
from left to right (by their box's left edge). Each answer has a FORM the question asks for
(a number, a mask, a grade, a box): `FOLLOWUP_FORMS` names it, and `bench/ablation.py`
scores how often the answer has it. The questions live here, once, for the training set
(`omnipath.train.synthetic_tasks`) and for the ablation.
"""

from __future__ import annotations

# (name, question, the form the answer must take)
FOLLOWUP_TURNS: tuple[tuple[str, str, str], ...] = (
    ("count", "How many lesions are on this slide?", "number"),
    ("segment", "Segment the largest one.", "mask"),
    ("grade", "What is its grade?", "grade"),
    ("box", "Box the second one.", "box"),
)
FOLLOWUP_FORMS = tuple(form for _, _, form in FOLLOWUP_TURNS)


def largest_lesion(pixel_counts: list[int]) -> int:
    """Index of the largest lesion (most label-map pixels; ties: the first)."""
    return max(range(len(pixel_counts)), key=lambda i: (pixel_counts[i], -i))


def second_from_left(left_edges: list[float]) -> int:
    """Index of "the second one": the second lesion from the left (the only one when there is
    one; ties keep index order)."""
    order = sorted(range(len(left_edges)), key=lambda i: (left_edges[i], i))
    return order[1] if len(order) > 1 else order[0]
