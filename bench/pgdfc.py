"""PGDFC benchmark: answer latency with PGDFC vs thumbnail-only vs exhaustive tiling.

    .venv/bin/python bench/pgdfc.py [--cache-dir data/bench] [--configs tiny,100m]
                                    [--max-new-tokens 128] [--repeats 3] [--threads 1]
                                    [--exhaustive-sample 96]

On a synthetic slide of at least 60k × 40k pixels (omnipath.synth, generated once into the
cache dir and reused, the same file bench/tiles.py uses), with random weights (latency does
not depend on what the weights say) and these configurations (--configs):

- `tiny`: the test model;
- `100m`: `llm_heavy_100m_config()`, ~100M parameters in the paper's proportions (~90 % in
  the LLM, as LLaVA-1.5-13B's ~94 %);
- `small`: `small_config()`, ~100M parameters, most of them in the vision towers;
- `mini`: omnipath-mini's shape, a SmolLM2-135M-shaped LLM with `100m`'s towers.

The parameter split (LLM / vision towers / rest) is printed for each. One run prints:

- end-to-end `Engine.answer` latency, median of --repeats, for PGDFC (S = 8), thumbnail-only
  (pgdfc_mode="off") and exhaustive, cold (first question on the slide: a freshly opened slide
  and empty caches), warm (a follow-up question attending to other cells: thumbnail features
  cached, detail cache emptied) and repeat (the same question again: the detail patches come
  from the engine's detail cache too);
- exhaustive = the thumbnail-only answer plus reading and encoding EVERY tissue tile at the
  detail magnification with the same towers (the patch-by-patch approach the paper argues
  against). Its per-tile cost is measured on a seeded random sample of the tissue tiles and
  multiplied by their number (the sample size is printed; --exhaustive-sample 0 = all tiles).
  It is a lower bound: the tokens of thousands of tiles would not even fit the LLM's context,
  and their aggregation is not counted;
- the probe's cost as a fraction of prefill, and the stage timings of one PGDFC answer.

Every answer generates exactly --max-new-tokens tokens (stop tokens disabled), so runs compare.
Times are printed twice: wall clock (what a user waits) and process CPU time (the work done;
with --threads 1 it equals wall time on an idle machine and stays put when other processes
share the CPU, which makes it the steadier basis for ratios on a busy box).
Goals (issue 3): PGDFC ≤ 1.3× thumbnail-only; exhaustive ≥ 20× PGDFC; probe ≤ 5 % of prefill.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from omnipath import pgdfc  # noqa: E402
from omnipath.coords import L0Rect  # noqa: E402
from omnipath.engine import Answer, AnswerOptions, Engine  # noqa: E402
from omnipath.engine.core import STAGES  # noqa: E402
from omnipath.slide import open_slide  # noqa: E402

QUESTION = "Which region of this slide is the most atypical, and what grade is the lesion?"
GOAL_PGDFC_VS_THUMB = 1.3
GOAL_EXHAUSTIVE_VS_PGDFC = 20.0
GOAL_PROBE_FRACTION = 0.05


def ensure_slide(cache_dir: Path, width: int, height: int, seed: int) -> Path:
    """The benchmark slide, generated (omnipath.synth) into cache_dir the first time."""
    final = cache_dir / f"synthetic-{width}x{height}-seed{seed}.tiff"
    if final.is_file():
        return final
    from omnipath.synth import write_synthetic_slide

    scratch = cache_dir / f".partial-pgdfc-{width}x{height}-seed{seed}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    print(f"generating the benchmark slide {width}x{height} (once; reused later) ...", flush=True)
    started = time.perf_counter()
    write_synthetic_slide(scratch / final.name, width, height, seed=seed)
    for item in sorted(scratch.iterdir(), key=lambda item: item.name == final.name):
        if not (cache_dir / item.name).exists():
            shutil.move(str(item), cache_dir / item.name)  # the slide last: marks completion
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"  generated in {time.perf_counter() - started:.0f} s", flush=True)
    return final


def mini_like_config():
    """omnipath-mini's shape: a SmolLM2-135M-shaped LLM (random weights) with the small towers
    of `llm_heavy_100m_config`; the tiny tokenizer's special-token ids."""
    from omnipath.model.configuration import llm_heavy_100m_config, smollm2_135m_text_config

    config = llm_heavy_100m_config().to_dict()
    config["text_config"] = smollm2_135m_text_config().to_dict()
    from omnipath.model import OmniPathConfig

    return OmniPathConfig(**config)


def build(name: str):
    from omnipath.model import OmniPathForConditionalGeneration, build_tiny_tokenizer, tiny_config
    from omnipath.model.configuration import llm_heavy_100m_config, small_config

    presets = {
        "tiny": tiny_config,
        "100m": llm_heavy_100m_config,
        "small": small_config,
        "mini": mini_like_config,
    }
    if name not in presets:
        raise SystemExit(f"unknown config {name!r}; choose from {', '.join(presets)}")
    torch.manual_seed(0)
    config = presets[name]()
    model = OmniPathForConditionalGeneration(config).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    return model, build_tiny_tokenizer()


@dataclass
class Runs:
    answers: list[Answer]
    cpu: list[float]  # process CPU seconds per answer (robust to other load on the machine)

    @property
    def seconds(self) -> float:
        return statistics.median(a.timings["total"] for a in self.answers)

    @property
    def cpu_seconds(self) -> float:
        return statistics.median(self.cpu)

    def stage(self, name: str) -> float:
        return statistics.median(a.timings.get(name, 0.0) for a in self.answers)


def answer_once(engine: Engine, slide, options: AnswerOptions) -> tuple[Answer, float]:
    cpu_start = time.process_time()
    *_, answer = engine.answer(slide, [], QUESTION, options)
    cpu = time.process_time() - cpu_start
    assert isinstance(answer, Answer)
    if answer.tokens["generated"] != options.max_new_tokens:
        raise RuntimeError("an answer stopped early; the runs would not compare")
    return answer, cpu


def measure(engine: Engine, slide_path: Path, options: AnswerOptions, repeats: int, kind: str):
    """kind: "cold" (empty caches, fresh slide), "warm" (thumbnail cached, detail cache
    emptied before each answer) or "repeat" (both cached)."""
    cold = kind == "cold"
    runs = Runs([], [])
    warm_slide = open_slide(slide_path) if not cold else None
    if warm_slide is not None:
        answer_once(engine, warm_slide, options)  # fills the caches: later runs are follow-ups
    for _ in range(repeats):
        if kind != "repeat":
            engine.details.clear()
        if cold:
            engine.thumbs.clear()
            with open_slide(slide_path) as fresh:  # no thumbnail cached in the slide either
                answer, cpu = answer_once(engine, fresh, options)
        else:
            answer, cpu = answer_once(engine, warm_slide, options)
        runs.answers.append(answer)
        runs.cpu.append(cpu)
    if warm_slide is not None:
        warm_slide.close()
    return runs


def tissue_tiles(engine: Engine, slide) -> tuple[list[L0Rect], int]:
    """Every tile of the slide at the detail magnification (the encoder's input side at that
    magnification) whose tissue fraction reaches the model's background threshold."""
    model = engine.model
    settings = model.config.pgdfc_config
    tile = pgdfc.detail_window_l0(
        encoder_side=model.detail_side,
        slide_mpp=slide.info.mpp_x,
        detail_mpp=10.0 / settings.detail_magnification,
    )
    l0_tile = round(tile)
    cols, rows = math.ceil(slide.l0_width / l0_tile), math.ceil(slide.l0_height / l0_tile)
    tissue = slide.tissue_mask(rows, cols) >= settings.background_threshold
    rects = [
        L0Rect(c * l0_tile, r * l0_tile, l0_tile, l0_tile)
        for r in range(rows)
        for c in range(cols)
        if tissue[r, c]
    ]
    return rects, rows * cols


def exhaustive_per_tile(
    engine: Engine, slide, rects: list[L0Rect], sample: int
) -> tuple[float, float, int]:
    """(wall s, CPU s) per tile to read and encode tissue tiles (batches of 8), measured on a
    seeded random sample of them."""
    model = engine.model
    if 0 < sample < len(rects):
        picks = np.random.default_rng(0).choice(len(rects), size=sample, replace=False)
        rects = [rects[i] for i in sorted(picks)]
    per_patch = model.config.pgdfc_config.tokens_per_patch
    side = pgdfc.detail_read_side(
        rects[0].w,
        slide_mpp=slide.info.mpp_x,
        detail_mpp=10.0 / model.config.pgdfc_config.detail_magnification,
        encoder_side=model.detail_side,
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    for i in range(0, len(rects), 8):
        patches = pgdfc.read_detail_patches(slide, rects[i : i + 8], side)
        with torch.inference_mode():
            model.encode_detail_patches(patches.to(engine.device), per_patch)
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
    wall = (time.perf_counter() - started) / len(rects)
    return wall, (time.process_time() - cpu_started) / len(rects), len(rects)


def goal(value: float, limit: float, *, at_most: bool) -> str:
    met = value <= limit if at_most else value >= limit
    return f"{'met' if met else 'NOT met'} (goal {'≤' if at_most else '≥'} {limit:g})"


def bench_config(name: str, slide_path: Path, args: argparse.Namespace) -> None:
    model, tokenizer = build(name)
    params = sum(p.numel() for p in model.parameters())
    llm_params = sum(p.numel() for p in model.language_model.parameters())
    tower_params = sum(p.numel() for p in model.vision.parameters())
    rest = params - llm_params - tower_params
    engine = Engine(
        model,
        tokenizer,
        model_id=name,
        revision=None,
        demo=True,
        stop_token_ids=set(),
    )
    print(
        f"\n== {name}: {params / 1e6:.1f}M parameters: LLM {llm_params / 1e6:.1f}M "
        f"({llm_params / params:.0%}), vision towers {tower_params / 1e6:.1f}M "
        f"({tower_params / params:.0%}), rest {rest / 1e6:.1f}M ({rest / params:.0%}; "
        f"projector, mask modules)\n"
        f"   thumbnail {model.thumb_side} px, {model.num_image_tokens} image tokens, "
        f"detail patches {model.detail_side} px at scales "
        f"{model.config.pgdfc_config.resolved_detail_scale_factors}, "
        f"P = {model.config.pgdfc_config.tokens_per_patch} tokens per detail patch, "
        f"{args.max_new_tokens} new tokens per answer, median of {args.repeats}; "
        "the probe is a layer-0 pre-pass, generation is transformers' generate",
        flush=True,
    )
    pgdfc_options = AnswerOptions(pgdfc_mode="attention", s=8, max_new_tokens=args.max_new_tokens)
    thumb_options = AnswerOptions(pgdfc_mode="off", s=0, max_new_tokens=args.max_new_tokens)
    with open_slide(slide_path) as slide:  # warm-up: first calls pay one-off costs
        answer_once(engine, slide, pgdfc_options)
        answer_once(engine, slide, thumb_options)

    results = {}
    for label in ("cold", "warm", "repeat"):
        results[label] = (
            measure(engine, slide_path, pgdfc_options, args.repeats, label),
            measure(engine, slide_path, thumb_options, args.repeats, label),
        )

    with open_slide(slide_path) as slide:
        rects, total_tiles = tissue_tiles(engine, slide)
        per_tile, per_tile_cpu, sampled = exhaustive_per_tile(
            engine, slide, rects, args.exhaustive_sample
        )
    tile_l0 = rects[0].w if rects else 0

    print(
        f"{'':12}{'PGDFC S=8':>11}{'thumb-only':>12}{'exhaustive':>12}{'PGDFC/thumb':>13}"
        f"{'exh/PGDFC':>11}"
    )
    ratios: dict[str, list[float]] = {"pgdfc/thumb": [], "exh/pgdfc": []}
    for label, (with_pgdfc, thumb_only) in results.items():
        for clock in ("wall", "cpu"):
            pg = with_pgdfc.seconds if clock == "wall" else with_pgdfc.cpu_seconds
            th = thumb_only.seconds if clock == "wall" else thumb_only.cpu_seconds
            exhaustive = th + len(rects) * (per_tile if clock == "wall" else per_tile_cpu)
            ratios["pgdfc/thumb"].append(pg / th)
            ratios["exh/pgdfc"].append(exhaustive / pg)
            print(
                f"{label + ' ' + clock:12}{pg:10.2f}s{th:11.2f}s{exhaustive:11.1f}s"
                f"{pg / th:12.2f}x{exhaustive / pg:10.1f}x"
            )
    print(
        f"exhaustive: {len(rects)} tissue tiles of {tile_l0} px level-0 (of {total_tiles}) at "
        f"{model.config.pgdfc_config.detail_magnification:g}x, read + encoded at "
        f"{per_tile * 1000:.1f} ms/tile wall, {per_tile_cpu * 1000:.1f} ms/tile CPU "
        f"(measured on {sampled} tiles), plus the thumb-only answer; a lower bound"
    )
    cold_pgdfc, cold_thumb = results["cold"]
    # Not counted above: the LLM would also have to take the exhaustive tiles' tokens.
    per_patch = model.config.pgdfc_config.tokens_per_patch
    prefill_rate = cold_thumb.stage("prefill") / cold_thumb.answers[0].tokens["prompt"]
    print(
        f"not counted: the LLM prefill of the exhaustive tiles' {len(rects) * per_patch} "
        f"tokens, about {len(rects) * per_patch * prefill_rate:.0f} s at the thumb-only "
        f"prefill's rate (linear: a lower bound), beyond the context of "
        f"{engine.context_length} tokens"
    )
    warm_pgdfc, warm_thumb = results["warm"]
    stages = STAGES
    for label, runs in (
        ("cold PGDFC", cold_pgdfc),
        ("cold thumb-only", cold_thumb),
        ("warm PGDFC", warm_pgdfc),
        ("repeat PGDFC", results["repeat"][0]),
    ):
        print(
            f"stages of a {label} answer (s, median): "
            + ", ".join(f"{s} {runs.stage(s):.3f}" for s in stages)
        )
    tokens = cold_pgdfc.answers[0].tokens
    print(
        f"prompt tokens: PGDFC {tokens['prompt']} (detail {tokens['detail']}), "
        f"thumb-only {cold_thumb.answers[0].tokens['prompt']}"
    )
    probe_runs = cold_pgdfc.answers + warm_pgdfc.answers
    fractions = [a.timings["probe"] / a.timings["prefill"] for a in probe_runs]
    fraction = statistics.median(fractions)
    probe_ms = statistics.median(a.timings["probe"] for a in probe_runs) * 1000
    print(
        f"probe: {probe_ms:.2f} ms, {fraction:.2%} of prefill (median of {len(fractions)} "
        f"answers; range {min(fractions):.2%}-{max(fractions):.2%})"
    )
    print(
        f"PGDFC adds {warm_pgdfc.seconds - warm_thumb.seconds:.2f} s wall, "
        f"{warm_pgdfc.cpu_seconds - warm_thumb.cpu_seconds:.2f} s CPU to a follow-up answer"
    )
    worst = max(ratios["pgdfc/thumb"])
    least = min(ratios["exh/pgdfc"])
    print(
        f"goal PGDFC/thumb-only, worst {worst:.2f}x (over cold/warm/repeat, wall/CPU): "
        f"{goal(worst, GOAL_PGDFC_VS_THUMB, at_most=True)}"
    )
    print(
        f"goal exhaustive/PGDFC, least {least:.1f}x: "
        f"{goal(least, GOAL_EXHAUSTIVE_VS_PGDFC, at_most=False)}"
    )
    print(f"goal probe/prefill {fraction:.2%}: {goal(fraction, GOAL_PROBE_FRACTION, at_most=True)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=REPO / "data" / "bench")
    parser.add_argument("--width", type=int, default=61440)
    parser.add_argument("--height", type=int, default=40960)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default="tiny,100m,small,mini")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: CPU time then equals work, stable on a shared machine)",
    )
    parser.add_argument(
        "--exhaustive-sample",
        type=int,
        default=96,
        help="tissue tiles actually read and encoded for the per-tile cost (0 = all)",
    )
    args = parser.parse_args(argv)
    if args.width < 60000 or args.height < 40000:
        print("note: the goals are stated for slides of at least 60000 x 40000 pixels")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    slide_path = ensure_slide(args.cache_dir, args.width, args.height, args.seed)
    print(
        f"slide {slide_path.name}; torch {torch.__version__}, {torch.get_num_threads()} CPU "
        f"threads, device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    for name in args.configs.split(","):
        bench_config(name.strip(), slide_path, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
