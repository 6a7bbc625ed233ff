"""Scoring for bench/ablation.py: what an answer is scored on, the numbers of one run, and the
issue-10 target table (measure, value, target, met) as markdown."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

MODES = ("off", "random", "attention")
MODE_LABELS = {"off": "no PGDFC (thumbnail)", "random": "random tiles", "attention": "PGDFC"}
ACCURACY_TASKS = ("grade", "kind", "count")

# Issue 10's targets on held-out slides (S = 8): (comparison, bound). Percentages in %.
TARGETS = {
    "grade_off": ("≤", 45.0),
    "grade_random": ("≤", 60.0),
    "grade_attention": ("≥", 75.0),
    "lesion_ratio": ("≥", 5.0),
    "box_f1": ("≥", 0.4),
    "mask_dice": ("≥", 0.6),
    "followup_form": ("≥", 90.0),
}


# --- one answer ---------------------------------------------------------------------------------


def normalise(task: str, text: str) -> str:
    """The part of an answer that is scored: the grade digit, the kind word, the count."""
    text = text.strip().lower()
    if task == "grade":
        found = re.search(r"grade\s*([1-3])", text)
        return found.group(1) if found else ""
    if task == "count":
        found = re.search(r"\b(\d+|no)\b", text)
        return found.group(1) if found else ""
    if task == "kind":
        found = re.search(r"carcinoma|inflammation", text)
        return found.group(0) if found else ""
    return text


def has_form(form: str, answer) -> bool:
    """Whether an answer has the form a follow-up asked for (`followups.FOLLOWUP_FORMS`): a
    count, a mask, a grade or a box."""
    if form == "number":
        return normalise("count", answer.text) != ""
    if form == "grade":
        return normalise("grade", answer.text) != ""
    if form == "mask":
        return bool(answer.masks)
    if form == "box":
        return bool(answer.boxes)
    raise ValueError(f"unknown answer form {form!r}")


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_scores(gold: list, predicted: list) -> tuple[int, int, int, list[float]]:
    """Greedy matching at IoU ≥ 0.5: (true positives, #predicted, #gold, best IoU per gold)."""
    used: set[int] = set()
    tp = 0
    best = []
    for g in gold:
        ious = [box_iou(g, p) for p in predicted]
        best.append(max(ious, default=0.0))
        order = sorted(range(len(predicted)), key=lambda i: -ious[i])
        for i in order:
            if i not in used and ious[i] >= 0.5:
                used.add(i)
                tp += 1
                break
    return tp, len(predicted), len(gold), best


def read_labels(truth) -> np.ndarray:
    """The slide's label map (one value per lesion, `truth.mask_downsample` px per pixel)."""
    return np.asarray(Image.open(truth.masks_path).convert("L"))


def mask_scores(answer, truth, labels: np.ndarray, lesion_index: int) -> tuple[float, float]:
    """Dice and IoU of the answer's first mask against the lesion, at label-map resolution."""
    gold = labels == truth.lesions[lesion_index].mask_value
    predicted = np.zeros_like(gold)
    if answer.masks:
        mask = answer.masks[0]
        down = truth.mask_downsample
        x0, y0 = mask.l0_rect.x // down, mask.l0_rect.y // down
        w = max(1, mask.l0_rect.w // down)
        h = max(1, mask.l0_rect.h // down)
        bitmap = Image.fromarray(mask.bitmap.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
        patch = np.asarray(bitmap) > 127
        h = min(h, predicted.shape[0] - y0)
        w = min(w, predicted.shape[1] - x0)
        predicted[y0 : y0 + h, x0 : x0 + w] = patch[:h, :w]
    inter = float((gold & predicted).sum())
    dice = 2 * inter / max(1.0, float(gold.sum() + predicted.sum()))
    iou = inter / max(1.0, float((gold | predicted).sum()))
    return dice, iou


def on_lesion(rect, truth, labels: np.ndarray) -> bool:
    down = truth.mask_downsample
    crop = labels[
        rect.y // down : (rect.y + rect.h) // down + 1,
        rect.x // down : (rect.x + rect.w) // down + 1,
    ]
    return bool((crop >= 2).any())


# --- one run ------------------------------------------------------------------------------------


def percent(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(raw: dict) -> dict:
    """The numbers of one run (`ablation.run` and `ablation.run_followups` output): per mode
    accuracy and grade accuracy, tiles on a lesion, boxes, masks, follow-ups. None where
    nothing was asked."""
    modes = raw["modes"]
    tiles = {
        m: percent(modes[m]["tiles_on_lesion"], modes[m]["tiles"]) for m in ("random", "attention")
    }
    b = raw["boxes"]
    precision = b["tp"] / b["pred"] if b["pred"] else 0.0
    recall = b["tp"] / b["gold"] if b["gold"] else 0.0
    turns = raw["followups"]["turns"]
    forms = dict.fromkeys(t["form"] for t in turns)
    per_form = {
        form: {
            "hits": sum(t["ok"] for t in turns if t["form"] == form),
            "turns": sum(t["form"] == form for t in turns),
        }
        for form in forms
    }
    count = [t for t in turns if t["correct"] is not None]
    grade = {
        f"grade_{m}": percent(modes[m]["grade_correct"], modes[m]["grade_asked"]) for m in MODES
    }
    return grade | {
        "accuracy": {m: percent(modes[m]["correct"], modes[m]["asked"]) for m in MODES},
        "tiles_on_lesion": tiles,
        "lesion_ratio": (
            tiles["attention"] / tiles["random"]
            if tiles["random"] and tiles["attention"] is not None
            else None
        ),
        "box_f1": (2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        if b["gold"]
        else None,
        "box_mean_iou": _mean(b["ious"]),
        "mask_dice": _mean(raw["masks"]["dice"]),
        "mask_iou": _mean(raw["masks"]["iou"]),
        "followup_form": percent(sum(t["ok"] for t in turns), len(turns)),
        "followup_per_form": per_form,
        "followup_count_correct": percent(sum(t["correct"] for t in count), len(count)),
    }


def target_met(key: str, value: float | None) -> bool | None:
    if value is None:
        return None
    comparison, bound = TARGETS[key]
    return value <= bound if comparison == "≤" else value >= bound


def targets_met(summary: dict) -> dict[str, bool | None]:
    """Each target of `TARGETS`: met, missed, or None (nothing was asked)."""
    return {key: target_met(key, summary[key]) for key in TARGETS}


# --- the table ----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """ "1 mask", "2 masks" ("2 boxes" when `words` says so)."""
    return f"{n} {word}" if n == 1 else f"{n} {words or word + 's'}"


def _target(key: str) -> str:
    comparison, bound = TARGETS[key]
    unit = {"lesion_ratio": "×", "box_f1": "", "mask_dice": ""}.get(key, " %")
    return f"{comparison} {bound:g}{unit}"


def _met(key: str, value: float | None) -> str:
    return {True: "yes", False: "no", None: "n/a"}[target_met(key, value)]


def target_table(raw: dict, summary: dict) -> str:
    """The issue-10 table as markdown: | measure | value | target | met |."""
    modes = raw["modes"]
    rows = []
    for mode in MODES:
        st = modes[mode]
        value = summary[f"grade_{mode}"]
        counts = f"({st['grade_correct']}/{st['grade_asked']})"
        rows.append(
            (
                f"grade accuracy, {MODE_LABELS[mode]}",
                f"{_num(value, unit=' %')} {counts}",
                _target(f"grade_{mode}"),
                _met(f"grade_{mode}", value),
            )
        )
    for mode in MODES:
        st = modes[mode]
        value = f"{_num(summary['accuracy'][mode], unit=' %')} ({st['correct']}/{st['asked']})"
        rows.append((f"accuracy (grade, kind, count), {MODE_LABELS[mode]}", value, "–", "–"))
    tiles = summary["tiles_on_lesion"]
    ratio = summary["lesion_ratio"]
    rows.append(
        (
            "tiles on a lesion, PGDFC against random tiles",
            f"{_num(tiles['attention'], unit=' %')} vs {_num(tiles['random'], unit=' %')}"
            f" = {_num(ratio, unit='×')}",
            _target("lesion_ratio"),
            _met("lesion_ratio", ratio),
        )
    )
    b, m = raw["boxes"], raw["masks"]
    rows.append(
        (
            "box F1 at IoU ≥ 0.5 (mean best IoU), PGDFC",
            f"{_num(summary['box_f1'], 3)} ({_num(summary['box_mean_iou'], 3)}; "
            f"{plural(b['gold'], 'gold box', 'gold boxes')})",
            _target("box_f1"),
            _met("box_f1", summary["box_f1"]),
        )
    )
    rows.append(
        (
            "mask Dice (IoU), PGDFC",
            f"{_num(summary['mask_dice'], 3)} ({_num(summary['mask_iou'], 3)}; "
            f"{plural(len(m['dice']), 'mask')})",
            _target("mask_dice"),
            _met("mask_dice", summary["mask_dice"]),
        )
    )
    turns = raw["followups"]["turns"]
    per_form = ", ".join(
        f"{f} {c['hits']}/{c['turns']}" for f, c in summary["followup_per_form"].items()
    )
    rows.append(
        (
            "follow-ups answered in the requested form",
            f"{_num(summary['followup_form'], unit=' %')} "
            f"({sum(t['ok'] for t in turns)}/{len(turns)}"
            + (f": {per_form})" if per_form else ")"),
            _target("followup_form"),
            _met("followup_form", summary["followup_form"]),
        )
    )
    count = [t for t in turns if t["correct"] is not None]
    rows.append(
        (
            "follow-up count right",
            f"{_num(summary['followup_count_correct'], unit=' %')} "
            f"({sum(t['correct'] for t in count)}/{len(count)})",
            "–",
            "–",
        )
    )
    lines = ["| measure | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)
