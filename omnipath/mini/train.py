"""Train omnipath-mini v3 in one command (2-core CPU: about 80 minutes with the defaults).

    python -m omnipath.mini.train                       # defaults below
    python -m omnipath.mini.train --slides 24 --stage2-minutes 10 --output /tmp/mini

Staged, the way LLaVA and UNI got their towers (issue 10):
0. builds (or reuses) the synthetic instruction set (`omnipath.train.synthetic_tasks`), train
   split only from here on; assembles SmolLM2-135M-Instruct (offline GGUF) with freshly
   initialised small towers, projector and mask modules;
1. stage 0, the towers: pretrained directly on labelled patches from the texture generator
   and on the training slides' thumbnails (`omnipath.mini.towers`), with real batches; a
   linear probe of the grade on frozen features of held-out patches is reported;
2. stage 1, alignment: the projector and LoRA on caption-style records (describe, count,
   kind), towers frozen;
3. stage 2, instructions: every task, the multi-turn follow-ups included, towers frozen;
   both stages add the probe-attention loss (`omnipath.train.probe_loss`, `--probe-weight`);
4. writes the weights (everything but the base LM) and the model card to `--output`, then
   runs `bench/ablation.py` on the held-out split and on a set built with another seed,
   which writes the card's Evaluation section (`--no-evaluate` skips it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from omnipath.mini.model import DEFAULT_WEIGHTS_DIR, build_mini_for_training

MAX_SHIPPED_BYTES = 50 * 1024 * 1024
ABLATION_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "ablation.py"
MINI_TASKS = ("grade", "detect", "segment", "refer", "count", "kind", "followup", "describe")
STAGE1_TASKS = ("describe", "count", "kind")


def data_config(model, *, n_slides: int, seed: int, detail_patches: int = 4):
    """The synthetic set that fits `model`'s shapes (thumbnail, grid, detail read, boxes).

    detail_patches: S of a TRAINING record. Fewer than the engine's S = 8: each patch costs
    ~34 LM tokens (position text and 4 image tokens), the LM's tokens are what a CPU run pays
    for, and the best-ranked patches (the ones a record has) come first at inference too."""
    from omnipath.train.synthetic_tasks import SyntheticSetConfig

    pgdfc_config = model.config.pgdfc_config
    return SyntheticSetConfig(
        n_slides=n_slides,
        seed=seed,
        thumb_side=int(model.thumb_side),
        grid=int(model.grid),
        detail_magnification=pgdfc_config.detail_magnification,
        detail_side=int(model.detail_side),
        detail_patches=detail_patches,
        context_fraction=pgdfc_config.context_fraction,
        box_decimals=model.config.box_decimals,
        probe_ranked=True,
        tasks=MINI_TASKS,
    )


def build_data(data_dir: Path, config) -> dict[str, Path]:
    """The set in `data_dir`, reused when its manifest was built from the same config."""
    from omnipath.train.synthetic_tasks import build_synthetic_set

    manifest = data_dir / "manifest.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())["config"]
        if saved == json.loads(json.dumps(asdict(config))):
            return {name: data_dir / f"{name}.json" for name in ("train", "val", "test")}
    return build_synthetic_set(data_dir, config, progress=True)


def thumb_targets(data_dir: Path, model) -> list:
    """Stage 0's thumbnail supervision: every TRAINING slide's square thumbnail and the
    fraction of each grid cell that is carcinoma, inflammation and tissue."""
    import numpy as np
    import torch
    from PIL import Image

    from omnipath.coords import ThumbFrame
    from omnipath.mini.towers import CELL_TARGETS, ThumbTargets
    from omnipath.synth import read_synthetic_labels
    from omnipath.train.data import to_tensor
    from omnipath.train.synthetic_tasks import cell_fractions

    manifest = json.loads((data_dir / "manifest.json").read_text())
    side, grid = int(model.thumb_side), int(model.grid)
    out = []
    for entry in manifest["slides"]["train"]:
        truth = read_synthetic_labels(data_dir / entry["slide"])
        label_map = Image.open(truth.masks_path).convert("L")
        frame = ThumbFrame(truth.width, truth.height, side)
        values = {
            "carcinoma": {les.mask_value for les in truth.lesions if les.kind == "carcinoma"},
            "inflammation": {les.mask_value for les in truth.lesions if les.kind == "inflammation"},
            "tissue": set(range(1, 256)),
        }
        cells = [
            cell_fractions(label_map, frame, grid, values[name])
            if values[name]
            else np.zeros((grid, grid), dtype=np.float32)
            for name in CELL_TARGETS
        ]
        thumb = Image.open(data_dir / "thumbs" / f"{truth.path.stem}.png").convert("RGB")
        out.append(
            ThumbTargets(
                image=to_tensor(frame.render(thumb)),
                cells=torch.from_numpy(np.stack(cells).astype(np.float32)),
            )
        )
    return out


def export_weights(peft_model, output: Path) -> int:
    """Save the PEFT weights and the OmniPathConfig; return the bytes written."""
    output.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(output)
    peft_model.base_model.model.config.save_pretrained(output)
    total = sum(p.stat().st_size for p in output.iterdir() if p.is_file())
    if total > MAX_SHIPPED_BYTES:
        raise RuntimeError(
            f"omnipath-mini weights are {total / 2**20:.1f} MiB, over the 50 MiB limit"
        )
    return total


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cache = Path.home() / ".cache" / "omnipath"
    parser.add_argument("--data", type=Path, default=cache / "synthetic-v3")
    parser.add_argument("--slides", type=int, default=50)
    parser.add_argument("--tower-steps", type=int, default=400, help="stage 0 batches of 64")
    parser.add_argument("--tower-minutes", type=float, default=8.0)
    parser.add_argument("--stage1-minutes", type=float, default=5.0)
    parser.add_argument("--stage2-minutes", type=float, default=42.0)
    parser.add_argument("--stage2-epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=4e-4, help="LoRA learning rate")
    parser.add_argument("--new-module-lr", type=float, default=2e-3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument(
        "--probe-weight",
        type=float,
        default=1.0,
        help="weight of the probe-attention loss (omnipath.train.probe_loss); 0 = the paper",
    )
    parser.add_argument("--run-dir", type=Path, default=cache / "mini-run-v3")
    parser.add_argument("--output", type=Path, default=DEFAULT_WEIGHTS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--eval-slides", type=int, default=10, help="slides of the other-seed evaluation set"
    )
    parser.add_argument("--no-evaluate", action="store_true", help="skip bench/ablation.py")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    import torch

    from omnipath.mini.card import write_model_card
    from omnipath.mini.towers import pretrain_towers
    from omnipath.train.collator import ConversationCollator
    from omnipath.train.data import ConversationDataset, read_records
    from omnipath.train.synthetic_tasks import records_per_task
    from omnipath.train.trainer import TrainConfig, train

    started = time.time()
    torch.manual_seed(args.seed)
    model, tokenizer = build_mini_for_training(seed=args.seed)
    config = model.config
    paths = build_data(args.data, data_config(model, n_slides=args.slides, seed=args.seed))
    manifest = json.loads((args.data / "manifest.json").read_text())
    print(
        f"data ready in {time.time() - started:.0f} s: {records_per_task(paths['train'])}",
        flush=True,
    )

    pgdfc_config = config.pgdfc_config
    towers = pretrain_towers(
        model.vision,
        thumb_targets(args.data, model),
        detail_scales=pgdfc_config.resolved_detail_scale_factors,
        detail_side=int(model.detail_side),
        slide_mpp=float(manifest["config"]["mpp"]),
        detail_mpp=10.0 / pgdfc_config.detail_magnification,
        steps=args.tower_steps,
        time_limit_s=args.tower_minutes * 60.0,
        seed=args.seed,
    )

    records = read_records(paths["train"])
    collator = ConversationCollator(
        tokenizer,
        image_token_id=config.image_token_id,
        mask_token_id=config.mask_token_id,
        num_image_tokens=model.num_image_tokens,
        tokens_per_patch=pgdfc_config.tokens_per_patch,
    )

    def stage(name: str, chosen, minutes: float, steps: int, warmup: float) -> TrainConfig:
        return TrainConfig(
            output_dir=str(args.run_dir / name),
            max_steps=steps,
            lr=args.lr,
            new_module_lr=args.new_module_lr,
            warmup_ratio=warmup,
            lora=True,
            lora_r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            probe_weight=args.probe_weight,
            frozen_modules=("vision",),
            save_every=100,
            keep_checkpoints=1,
            seed=args.seed,
            time_limit_s=minutes * 60.0,
            extra={"stage": name, "records": len(chosen)},
        )

    def dataset(chosen):
        return ConversationDataset(
            chosen, thumb_side=model.thumb_side, detail_side=int(model.detail_side)
        )

    stages = []
    aligned = [r for r in records if r.task in STAGE1_TASKS]
    # Stage 1 has a fixed number of steps; its pace sets stage 2's: the cosine schedule must
    # reach its end within the time budget (a run cut by the clock ends at a high learning
    # rate). Stage 2's records are longer (history, boxes): ~1.25× a stage-1 step.
    steps = round(args.stage1_minutes * 60 / 4.0)  # ~4 s a step on 2 cores
    for name, chosen, minutes, warmup in (
        ("stage1", aligned, args.stage1_minutes, 0.1),
        ("stage2", records, args.stage2_minutes, 0.05),
    ):
        if stages:  # stage 2: as many steps as stage 1's pace fits in its minutes
            seconds_per_step = stages[-1][2] / max(1, stages[-1][1].steps)
            fit = int(args.stage2_minutes * 60 / (1.25 * seconds_per_step))
            steps = max(1, min(fit, round(args.stage2_epochs * len(chosen))))
        settings = stage(name, chosen, minutes, steps, warmup)
        stage_started = time.time()
        result = train(model, dataset(chosen), collator, settings, resume=True)
        model = result.model
        stages.append((settings, result, time.time() - stage_started))

    size = export_weights(model, args.output)
    command = "python -m omnipath.mini.train " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    write_model_card(
        args.output,
        data_manifest=manifest,
        towers=towers,
        stages=stages,
        weights_bytes=size,
        total_seconds=time.time() - started,
        command=command.strip(),
    )
    print(f"saved {size / 2**20:.1f} MiB to {args.output}", flush=True)
    if not args.no_evaluate:
        evaluate(args, other_set=data_config(model, n_slides=args.eval_slides, seed=args.seed + 1))
    print(f"done in {(time.time() - started) / 60:.1f} min", flush=True)


def evaluate(args, *, other_set) -> None:
    """bench/ablation.py on the held-out split and on a set of another seed; it writes the
    card's Evaluation section (a retrained model never keeps a stale one)."""
    if not ABLATION_SCRIPT.is_file():
        print(f"{ABLATION_SCRIPT} is not in this checkout: the card has no Evaluation.")
        return
    other = args.data.with_name(args.data.name + f"-seed{other_set.seed}")
    build_data(other, other_set)
    subprocess.run(
        [
            sys.executable,
            str(ABLATION_SCRIPT),
            "--weights",
            str(args.output),
            "--data",
            str(args.data),
            "--also",
            str(other),
            "--card",
            str(args.output / "README.md"),
            "--json",
            str(args.output / "evaluation.json"),
            "--max-new-tokens",
            "96",  # a detect answer of three boxes is ~75 tokens
        ],
        check=True,
    )


if __name__ == "__main__":
    main()
