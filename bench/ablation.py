"""The paper's Table 6 in miniature, on the held-out (test) split of the synthetic set.

    python bench/ablation.py --data ~/.cache/omnipath/synthetic            # omnipath-mini
    python bench/ablation.py --data DIR --weights omnipath/mini/weights --limit 20 --s 8

For every slide-level question of the test split (grade, kind, count, detect, segment), the
engine answers three times: PGDFC off (thumbnail only), random tiles (seeded), PGDFC (S = 8).
Printed as one table:
- accuracy per mode (grade / kind / count answers, exact after normalisation);
- the fraction of the detail tiles that fall on a lesion, PGDFC next to random;
- box F1 (IoU ≥ 0.5) and mean IoU of the detect answers; mask Dice and IoU of the segment
  answers (the analogues of the paper's Tables 3 and 5), with PGDFC on.
The test split's slides were never used in training (`omnipath.train.synthetic_tasks`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("off", "random", "attention")
ACCURACY_TASKS = ("grade", "kind", "count")


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


def run(engine, records: list[dict], root: Path, s: int, max_new_tokens: int) -> dict:
    from omnipath.boxes import parse_box_text
    from omnipath.engine import AnswerOptions
    from omnipath.slide import open_slide
    from omnipath.synth import read_synthetic_labels

    stats = {
        m: {"correct": 0, "asked": 0, "grade_correct": 0, "grade_asked": 0, "tiles": 0}
        | {"tiles_on_lesion": 0}
        for m in MODES
    }
    boxes = {"tp": 0, "pred": 0, "gold": 0, "ious": []}
    masks = {"dice": [], "iou": []}
    for n, record in enumerate(records, start=1):
        stem = record["id"].split("-")[0]
        slide_path = root / "slides" / f"{stem}.tiff"
        truth = read_synthetic_labels(slide_path)
        labels = read_labels(truth)
        question = record["conversations"][0]["value"].replace("<image>\n", "", 1)
        gold = record["conversations"][1]["value"]
        task = record["task"]
        modes = MODES if task in ACCURACY_TASKS else ("attention",)
        with open_slide(slide_path) as slide:
            for mode in modes:
                options = AnswerOptions(pgdfc_mode=mode, s=s, max_new_tokens=max_new_tokens, seed=n)
                answer = [item for item in engine.answer(slide, [], question, options)][-1]
                if answer.error:
                    print(f"  {record['id']} [{mode}] error: {answer.error}", file=sys.stderr)
                st = stats[mode]
                st["tiles"] += len(answer.regions)
                st["tiles_on_lesion"] += sum(
                    on_lesion(r.l0_rect, truth, labels) for r in answer.regions
                )
                if task in ACCURACY_TASKS:
                    right = int(normalise(task, gold) == normalise(task, answer.text) != "")
                    st["asked"] += 1
                    st["correct"] += right
                    if task == "grade":  # the task whose answer only the detail patches show
                        st["grade_asked"] += 1
                        st["grade_correct"] += right
                elif task == "detect":
                    gold_boxes = [(b.x0, b.y0, b.x1, b.y1) for b in parse_box_text(gold)]
                    predicted = [(b.rel.x0, b.rel.y0, b.rel.x1, b.rel.y1) for b in answer.boxes]
                    tp, n_pred, n_gold, best = box_scores(gold_boxes, predicted)
                    boxes["tp"] += tp
                    boxes["pred"] += n_pred
                    boxes["gold"] += n_gold
                    boxes["ious"] += best
                elif task == "segment":
                    index = int(record["id"].rsplit("segment", 1)[1])
                    dice, iou = mask_scores(answer, truth, labels, index)
                    masks["dice"].append(dice)
                    masks["iou"].append(iou)
                print(f"  {record['id']} [{mode}] {answer.text[:70]!r}", file=sys.stderr)
    return {"modes": stats, "boxes": boxes, "masks": masks}


def print_table(result: dict, n_records: int, s: int) -> None:
    stats = result["modes"]

    def pct(a: float, b: float) -> str:
        return f"{100.0 * a / b:5.1f}" if b else "  n/a"

    print(f"\nPGDFC ablation on held-out slides ({n_records} questions, S = {s})")
    print("| mode | accuracy % | grade accuracy % | tiles on a lesion % |")
    print("|---|---|---|---|")
    labels = {"off": "no PGDFC (thumbnail)", "random": "random tiles", "attention": "PGDFC"}
    for mode in MODES:
        st = stats[mode]
        tiles = pct(st["tiles_on_lesion"], st["tiles"]) if mode != "off" else "    -"
        grade = f"{pct(st['grade_correct'], st['grade_asked'])} ({st['grade_correct']}/{st['grade_asked']})"
        print(
            f"| {labels[mode]} | {pct(st['correct'], st['asked'])} ({st['correct']}/{st['asked']})"
            f" | {grade} | {tiles} |"
        )
    b = result["boxes"]
    precision = b["tp"] / b["pred"] if b["pred"] else 0.0
    recall = b["tp"] / b["gold"] if b["gold"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    mean_iou = float(np.mean(b["ious"])) if b["ious"] else float("nan")
    m = result["masks"]
    dice = float(np.mean(m["dice"])) if m["dice"] else float("nan")
    iou = float(np.mean(m["iou"])) if m["iou"] else float("nan")
    print(f"| boxes (PGDFC) | F1 {f1:.3f}, mean IoU {mean_iou:.3f} ({b['gold']} gold boxes) | | |")
    print(f"| masks (PGDFC) | Dice {dice:.3f}, IoU {iou:.3f} ({len(m['dice'])} masks) | | |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path.home() / ".cache" / "omnipath" / "synthetic"
    )
    parser.add_argument("--weights", type=Path, default=None, help="omnipath-mini weights folder")
    parser.add_argument("--s", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="at most this many questions")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--splits",
        default="test",
        help="comma-separated splits to ask (default: test). A set built with another seed "
        "than the model's has no slide in common with its training, so all its splits are "
        "held out.",
    )
    args = parser.parse_args(argv)

    import torch

    from omnipath.engine import Engine
    from omnipath.mini.model import DEFAULT_WEIGHTS_DIR, MINI_MODEL_ID, load_mini

    torch.manual_seed(0)
    model, tokenizer = load_mini(args.weights or DEFAULT_WEIGHTS_DIR)
    engine = Engine(model, tokenizer, model_id=MINI_MODEL_ID, revision=None, demo=True)
    records = [
        r
        for split in args.splits.split(",")
        for r in json.loads((args.data / f"{split.strip()}.json").read_text())
        if r["task"] in (*ACCURACY_TASKS, "detect", "segment")
    ]
    if args.limit:
        records = records[: args.limit]
    started = time.time()
    result = run(engine, records, args.data, args.s, args.max_new_tokens)
    print_table(result, len(records), args.s)
    print(f"({time.time() - started:.0f} s on {torch.get_num_threads()} CPU threads)")


if __name__ == "__main__":
    main()
