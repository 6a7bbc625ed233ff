"""Concurrent conversations on one engine: aggregate tokens/s and time to first token.

    .venv/bin/python bench/concurrency.py [--model mini] [--conversations 8]
                                          [--max-new-tokens 32] [--repeats 3]

One run, on a generated slide (omnipath.synth, 4096 × 3072, cached in --cache-dir) with the
engine loaded as the app loads it (float32 on the CPU by default):

- alone: one question at a time (median of --repeats): the answer latency, its time to first
  token and its tokens/s;
- together: --conversations questions asked at the same moment from threads: aggregate
  tokens/s (all generated tokens / wall time until the last answer ends) and the p95 time to
  first token.

Printed as ratios against one conversation alone (goals, issue 11: aggregate tokens/s ≥ 3×,
p95 time to first token ≤ 2×). Every answer generates exactly --max-new-tokens tokens (stop
tokens disabled), so the runs compare. The slide's thumbnail is encoded once before timing
(a conversation is about a slide already open); each question differs, so detail patches are
read and encoded per question unless PGDFC chooses the same cells.
Uses only `Engine.answer`, so the same script measures the engine before and after a change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from omnipath.engine import Answer, AnswerOptions, Engine  # noqa: E402

QUESTIONS = [
    "Which region of this slide is the most atypical?",
    "Find every lesion and give its box.",
    "Describe the tissue architecture.",
    "Is there necrosis on this slide?",
    "What grade is the lesion?",
    "Where are the glands densest?",
    "Are the nuclei pleomorphic?",
    "Summarize the findings of this slide.",
]


def ask(engine: Engine, slide, question: str, options: AnswerOptions) -> dict:
    """One answer: seconds to the first text, seconds in all, tokens generated."""
    started = time.perf_counter()
    first = None
    answer = None
    for item in engine.answer(slide, [], question, options):
        if isinstance(item, str) and first is None:
            first = time.perf_counter() - started
        if isinstance(item, Answer):
            answer = item
    total = time.perf_counter() - started
    return {"ttft": first if first is not None else total, "total": total,
            "tokens": answer.tokens["generated"]}  # fmt: skip


def together(engine: Engine, slide, count: int, options: AnswerOptions) -> tuple[float, list]:
    results: list[dict] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(count)

    def run(index: int) -> None:
        gate.wait()
        try:
            results.append(ask(engine, slide, QUESTIONS[index % len(QUESTIONS)], options))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"a concurrent answer failed: {errors[0]!r}")
    return time.perf_counter() - started, results


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "data" / "bench")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--s", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from omnipath.model.loading import LoadOptions, load_model
    from omnipath.slide import open_slide
    from omnipath.synth import write_synthetic_slide

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    path = args.cache_dir / "concurrency-4096x3072.tiff"
    if not path.is_file():
        write_synthetic_slide(path, 4096, 3072, seed=12345, n_lesions=2)
    loaded = load_model(args.model, LoadOptions(dtype="float32", device=args.device))
    engine = Engine(
        loaded.model, loaded.tokenizer, model_id=loaded.model_id, revision=loaded.revision,
        demo=True, stop_token_ids=set(),
    )  # fmt: skip
    options = AnswerOptions(s=args.s, max_new_tokens=args.max_new_tokens)
    with open_slide(path) as slide:
        ask(engine, slide, "Warm up.", options)  # the thumbnail's features, cached
        alone = [
            ask(engine, slide, QUESTIONS[i % len(QUESTIONS)], options) for i in range(args.repeats)
        ]
        wall, many = together(engine, slide, args.conversations, options)
    total_1 = statistics.median(r["total"] for r in alone)
    ttft_1 = statistics.median(r["ttft"] for r in alone)
    rate_1 = statistics.median(r["tokens"] / r["total"] for r in alone)
    rate_n = sum(r["tokens"] for r in many) / wall
    ttft_n = p95([r["ttft"] for r in many])
    n = args.conversations
    print(f"{loaded.model_id} on {args.device}, S = {args.s}, {args.max_new_tokens} new tokens")
    print(f"alone: answer {total_1:.2f} s, first token {ttft_1:.2f} s, {rate_1:.1f} tokens/s")
    print(f"{n} together: {rate_n:.1f} tokens/s in all, p95 first token {ttft_n:.2f} s")
    print(f"aggregate tokens/s, {n} vs 1: {rate_n / rate_1:.2f}x (goal >= 3)")
    print(f"p95 time to first token, {n} vs 1: {ttft_n / ttft_1:.2f}x (goal <= 2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
