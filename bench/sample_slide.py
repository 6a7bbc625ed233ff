"""omnipath-mini on the README's sample slide: its answers next to the slide's ground truth.

    python bench/sample_slide.py                          # the app's sample (16384×12288, seed 0)
    python bench/sample_slide.py --data-dir /tmp/omnipath --weights omnipath/mini/weights

The sample slide is what `python -m web` opens first (web/sample.py; generated when absent).
Asked with PGDFC on (S = 8), as the app asks: how many lesions, every lesion's box, each
lesion's grade (the question names its kind and box), then the follow-up conversation.
Prints each answer with the truth and whether they agree (count exact, grade exact, boxes
matched at IoU ≥ 0.5), and the number of agreements.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation_scores import box_scores, normalise  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from web.config import WebConfig

    defaults = WebConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path(defaults.data_dir))
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--s", type=int, default=8)
    args = parser.parse_args(argv)

    import torch

    from omnipath.coords import l0_to_rel
    from omnipath.engine import AnswerOptions, Engine
    from omnipath.mini.model import DEFAULT_WEIGHTS_DIR, MINI_MODEL_ID, load_mini
    from omnipath.slide import open_slide
    from omnipath.synth import read_synthetic_labels
    from omnipath.train.data import format_rel_box
    from omnipath.train.followups import FOLLOWUP_TURNS
    from web.sample import ensure_sample_slide

    torch.manual_seed(0)
    path = ensure_sample_slide(
        args.data_dir, defaults.sample_width, defaults.sample_height, defaults.sample_seed
    )
    truth = read_synthetic_labels(path)
    model, tokenizer = load_mini(args.weights or DEFAULT_WEIGHTS_DIR)
    engine = Engine(model, tokenizer, model_id=MINI_MODEL_ID, revision=None, demo=True)
    decimals = model.config.box_decimals
    options = AnswerOptions(pgdfc_mode="attention", s=args.s, max_new_tokens=96)
    rel = [l0_to_rel(les.l0_rect, truth.width, truth.height) for les in truth.lesions]
    agreed = asked = 0

    def report(question: str, answer, expected: str, right: bool) -> None:
        nonlocal agreed, asked
        asked += 1
        agreed += right
        mark = "ok " if right else "NO "
        print(f"{mark} Q: {question}\n    A: {answer.text!r}\n    truth: {expected}")

    with open_slide(path) as slide:

        def ask(question: str, history=()):
            return [item for item in engine.answer(slide, list(history), question, options)][-1]

        question = "How many lesions are on this slide?"
        answer = ask(question)
        report(
            question,
            answer,
            str(len(truth.lesions)),
            normalise("count", answer.text) == str(len(truth.lesions)),
        )
        question = "Find every lesion and give its box."
        answer = ask(question)
        gold = [(b.x0, b.y0, b.x1, b.y1) for b in rel]
        predicted = [(b.rel.x0, b.rel.y0, b.rel.x1, b.rel.y1) for b in answer.boxes]
        tp, _, _, _ = box_scores(gold, predicted)
        report(
            question,
            answer,
            "; ".join(format_rel_box(b, None, decimals) for b in rel),
            tp == len(gold) == len(predicted),
        )
        for lesion, box in zip(truth.lesions, rel, strict=True):
            question = f"What is the grade of the {lesion.kind} lesion at {format_rel_box(box, None, decimals)}?"
            answer = ask(question)
            report(
                question,
                answer,
                f"Grade {lesion.grade}.",
                normalise("grade", answer.text) == str(lesion.grade),
            )
        history: list[dict] = []
        for _, question, form in FOLLOWUP_TURNS:
            answer = ask(question, history)
            print(
                f"    follow-up ({form}): Q: {question} A: {answer.text!r} masks={len(answer.masks)} boxes={len(answer.boxes)}"
            )
            history += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer.text},
            ]
    print(
        f"\n{agreed} of {asked} answers agree with the sample slide's ground truth ({path.name})."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
