"""The paper's Table 6 in miniature, on held-out synthetic slides, against issue 10's targets.

    python bench/ablation.py --data ~/.cache/omnipath/synthetic            # omnipath-mini
    python bench/ablation.py --data DIR --weights omnipath/mini/weights --limit 20 --s 8
    python bench/ablation.py --weights W --data D --also D2 --card W/README.md --json W/eval.json

For every slide-level question of the asked splits (grade, kind, count, detect, segment), the
engine answers three times: PGDFC off (thumbnail only), random tiles (seeded), PGDFC (S = 8).
Then, on every slide of those questions, the 4-turn follow-up conversation of
`omnipath.train.followups` (count, segment the largest, its grade, box the second one) with
PGDFC on, each question after the earlier questions and answers. One table per data set:
- grade accuracy per mode (the answer only the detail patches show), with counts, and the
  accuracy over grade, kind and count;
- the fraction of the detail tiles that fall on a lesion, PGDFC next to random, and the ratio;
- box F1 (IoU ≥ 0.5) and mean IoU of the detect answers; mask Dice and IoU of the segment
  answers (the analogues of the paper's Tables 3 and 5), with PGDFC on;
- follow-ups answered in the form they ask for (a number, a mask, a grade, a box), and
  whether the count was right;
each row next to issue 10's target and whether it is met (`bench/ablation_scores.py`).

`--data` is the model's own set, asked on its test split (never used in training,
`omnipath.train.synthetic_tasks`); each `--also` set was built with another seed, so all its
splits are held out. `--card` writes the tables into the model card's Evaluation section
(`omnipath.mini.card.write_evaluation`); `--json` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation_scores import (  # noqa: E402
    ACCURACY_TASKS,
    MODES,
    box_scores,
    has_form,
    mask_scores,
    normalise,
    on_lesion,
    plural,
    read_labels,
    summarise,
    target_table,
    targets_met,
)

ALL_SPLITS = ("train", "val", "test")


def slide_path(root: Path, stem: str) -> Path:
    return root / "slides" / f"{stem}.tiff"


def slide_stem(record: dict) -> str:
    return record["id"].split("-")[0]


def _answer(engine, slide, history: list[dict], question: str, options):
    answer = list(engine.answer(slide, history, question, options))[-1]
    if answer.error:
        print(f"  [{options.pgdfc_mode}] error: {answer.error}", file=sys.stderr)
    return answer


def run(engine, records: list[dict], root: Path, s: int, max_new_tokens: int) -> dict:
    """Every question in the three modes → raw counts per mode, boxes and masks."""
    from omnipath.boxes import parse_box_text
    from omnipath.engine import AnswerOptions
    from omnipath.slide import open_slide
    from omnipath.synth import read_synthetic_labels

    keys = ("correct", "asked", "grade_correct", "grade_asked", "tiles", "tiles_on_lesion")
    stats = {m: dict.fromkeys(keys, 0) for m in MODES}
    boxes = {"tp": 0, "pred": 0, "gold": 0, "ious": []}
    masks = {"dice": [], "iou": []}
    for n, record in enumerate(records, start=1):
        path = slide_path(root, slide_stem(record))
        truth = read_synthetic_labels(path)
        labels = read_labels(truth)
        question = record["conversations"][0]["value"].replace("<image>\n", "", 1)
        gold = record["conversations"][1]["value"]
        task = record["task"]
        modes = MODES if task in ACCURACY_TASKS else ("attention",)
        with open_slide(path) as slide:
            for mode in modes:
                options = AnswerOptions(pgdfc_mode=mode, s=s, max_new_tokens=max_new_tokens, seed=n)
                answer = _answer(engine, slide, [], question, options)
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


def run_followups(engine, root: Path, stems: list[str], s: int, max_new_tokens: int) -> dict:
    """The follow-up conversation on every slide, PGDFC on → one row per turn: its form, whether
    the answer has it, and (count turn) whether the count matches the slide's lesions."""
    from omnipath.engine import AnswerOptions
    from omnipath.slide import open_slide
    from omnipath.synth import read_synthetic_labels
    from omnipath.train.followups import FOLLOWUP_TURNS

    turns = []
    for n, stem in enumerate(stems, start=1):
        path = slide_path(root, stem)
        n_lesions = len(read_synthetic_labels(path).lesions)
        history: list[dict] = []
        options = AnswerOptions(pgdfc_mode="attention", s=s, max_new_tokens=max_new_tokens, seed=n)
        with open_slide(path) as slide:
            for name, question, form in FOLLOWUP_TURNS:
                answer = _answer(engine, slide, history, question, options)
                correct = None
                if name == "count":
                    correct = normalise("count", answer.text) == str(n_lesions)
                turns.append(
                    {
                        "slide": stem,
                        "turn": name,
                        "form": form,
                        "ok": has_form(form, answer),
                        "correct": correct,
                        "text": answer.text,
                    }
                )
                history += [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer.text},
                ]
                print(f"  {stem} follow-up {name}: {answer.text[:70]!r}", file=sys.stderr)
    return {"turns": turns}


def load_records(data: Path, splits: tuple[str, ...], limit: int | None) -> list[dict]:
    records = [
        r
        for split in splits
        for r in json.loads((data / f"{split}.json").read_text())
        if r["task"] in (*ACCURACY_TASKS, "detect", "segment")
    ]
    return records[:limit] if limit else records


def evaluate_set(engine, data: Path, splits: tuple[str, ...], args) -> dict:
    """One data set: its questions and follow-ups → raw numbers, summary, the markdown table."""
    manifest = json.loads((data / "manifest.json").read_text())
    records = load_records(data, splits, args.limit)
    stems = list(dict.fromkeys(slide_stem(r) for r in records))
    started = time.time()
    raw = run(engine, records, data, args.s, args.max_new_tokens)
    raw["followups"] = run_followups(engine, data, stems, args.s, args.max_new_tokens)
    summary = summarise(raw)
    seed = manifest["config"]["seed"]
    title = (
        f"seed {seed}, split{'s' if len(splits) > 1 else ''} {', '.join(splits)}: "
        f"{plural(len(stems), 'slide')}, {plural(len(records), 'question')}"
    )
    return {
        "data": str(data),
        "seed": seed,
        "splits": list(splits),
        "n_slides": len(stems),
        "n_questions": len(records),
        "seconds": time.time() - started,
        "title": title,
        "table": target_table(raw, summary),
        "summary": summary,
        "targets_met": targets_met(summary),
        "raw": raw,
    }


def report(results: list[dict], command: str, s: int, threads: int, seconds: float) -> str:
    """The markdown of a run: the command line, then one table per data set."""
    lines = [
        f"`{command}` (S = {s}; {seconds:.0f} s on "
        f"{threads} CPU thread{'s' if threads != 1 else ''}):"
    ]
    for result in results:
        lines += ["", f"**{result['title']}**", "", result["table"]]
    return "\n".join(lines)


def check_data(parser: argparse.ArgumentParser, data: Path, splits: tuple[str, ...]) -> None:
    for name in ("manifest.json", *(f"{split}.json" for split in splits)):
        if not (data / name).is_file():
            parser.error(
                f"{data} has no {name}: build a set with "
                "omnipath.train.synthetic_tasks.build_synthetic_set first."
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path.home() / ".cache" / "omnipath" / "synthetic"
    )
    parser.add_argument("--weights", type=Path, default=None, help="omnipath-mini weights folder")
    parser.add_argument("--s", type=int, default=8)
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many questions per data set"
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--splits",
        default="test",
        help="comma-separated splits of --data to ask (default: test, the held-out split).",
    )
    parser.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        help="another data set, built with another seed than the model's: it has no slide in "
        "common with its training, so all its splits are asked (repeatable).",
    )
    parser.add_argument("--card", type=Path, help="model card whose Evaluation section to write")
    parser.add_argument("--json", type=Path, help="write the raw numbers here as JSON")
    args = parser.parse_args(argv)
    sets = [(args.data, tuple(s.strip() for s in args.splits.split(",")))]
    sets += [(data, ALL_SPLITS) for data in args.also]
    for data, splits in sets:
        check_data(parser, data, splits)
    if args.card and not args.card.is_file():
        parser.error(f"there is no model card at {args.card}.")

    import torch

    from omnipath.engine import Engine
    from omnipath.mini.card import write_evaluation
    from omnipath.mini.model import DEFAULT_WEIGHTS_DIR, MINI_MODEL_ID, load_mini

    torch.manual_seed(0)
    model, tokenizer = load_mini(args.weights or DEFAULT_WEIGHTS_DIR)
    engine = Engine(model, tokenizer, model_id=MINI_MODEL_ID, revision=None, demo=True)
    started = time.time()
    results = [evaluate_set(engine, data, splits, args) for data, splits in sets]
    seconds = time.time() - started
    command = shlex.join(["python", "bench/ablation.py", *(sys.argv[1:] if argv is None else argv)])
    threads = torch.get_num_threads()
    markdown = report(results, command, args.s, threads, seconds)
    print("\n" + markdown)
    if args.card:
        write_evaluation(args.card, markdown)
    if args.json:
        payload = {"command": command, "threads": threads, "seconds": seconds, "s": args.s}
        payload["sets"] = [{k: v for k, v in r.items() if k != "table"} for r in results]
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
