"""Train omnipath-mini in one command (2-core CPU: at most ~90 minutes with the defaults).

    python -m omnipath.mini.train                       # defaults below
    python -m omnipath.mini.train --minutes 25 --slides 24 --data /tmp/omnipath-synthetic

1. builds (or reuses) the synthetic instruction set (`omnipath.train.synthetic_tasks`);
2. assembles SmolLM2-135M-Instruct (offline GGUF) with freshly initialised small towers,
   projector and mask modules;
3. trains with LoRA on the LM and the other modules in full (the paper's single-stage recipe,
   with higher learning rates because the towers start from random weights, plus the
   probe-attention loss that points PGDFC at lesions, `--probe-weight`), on the train split
   only, for at most `--minutes`;
4. writes the weights (everything but the base LM) and a model card to `--output`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from omnipath.mini.model import DEFAULT_WEIGHTS_DIR, build_mini_for_training

MAX_SHIPPED_BYTES = 50 * 1024 * 1024


def build_data(data_dir: Path, n_slides: int, seed: int) -> dict[str, Path]:
    from omnipath.train.synthetic_tasks import SyntheticSetConfig, build_synthetic_set

    config = SyntheticSetConfig(n_slides=n_slides, seed=seed)
    manifest = data_dir / "manifest.json"
    if manifest.is_file():
        from dataclasses import asdict

        saved = json.loads(manifest.read_text())["config"]
        if saved == json.loads(json.dumps(asdict(config))):
            return {name: data_dir / f"{name}.json" for name in ("train", "val", "test")}
    return build_synthetic_set(data_dir, config, progress=True)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path.home() / ".cache" / "omnipath" / "synthetic"
    )
    parser.add_argument("--slides", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=75.0, help="training time limit")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-4, help="LoRA learning rate")
    parser.add_argument("--new-module-lr", type=float, default=2e-3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument(
        "--probe-weight",
        type=float,
        default=0.5,
        help="weight of the probe-attention loss (omnipath.train.probe_loss); 0 = the paper",
    )
    parser.add_argument(
        "--run-dir", type=Path, default=Path.home() / ".cache" / "omnipath" / "mini-run"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_WEIGHTS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from omnipath.mini.card import write_model_card
    from omnipath.train.collator import ConversationCollator
    from omnipath.train.data import ConversationDataset
    from omnipath.train.synthetic_tasks import records_per_task
    from omnipath.train.trainer import TrainConfig, train

    started = time.time()
    paths = build_data(args.data, args.slides, args.seed)
    print(
        f"data ready in {time.time() - started:.0f} s: {records_per_task(paths['train'])}",
        flush=True,
    )
    model, tokenizer = build_mini_for_training(seed=args.seed)
    config = model.config
    dataset = ConversationDataset(
        paths["train"], thumb_side=model.thumb_side, detail_side=model.thumb_side
    )
    collator = ConversationCollator(
        tokenizer,
        image_token_id=config.image_token_id,
        mask_token_id=config.mask_token_id,
        num_image_tokens=model.num_image_tokens,
        tokens_per_patch=config.pgdfc_config.tokens_per_patch,
    )
    train_config = TrainConfig(
        output_dir=str(args.run_dir),
        epochs=args.epochs,
        max_steps=args.max_steps,
        grad_accum=args.grad_accum,
        lr=args.lr,
        new_module_lr=args.new_module_lr,
        warmup_ratio=0.05,
        lora=True,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        probe_weight=args.probe_weight,
        save_every=50,
        keep_checkpoints=1,
        seed=args.seed,
        time_limit_s=args.minutes * 60.0,
    )
    torch.manual_seed(args.seed)
    train_started = time.time()
    result = train(model, dataset, collator, train_config, resume=True)
    train_seconds = time.time() - train_started
    size = export_weights(result.model, args.output)
    write_model_card(
        args.output,
        data_manifest=json.loads((args.data / "manifest.json").read_text()),
        train_config=train_config,
        steps=result.steps,
        losses=result.losses,
        train_seconds=train_seconds,
        weights_bytes=size,
        command="python -m omnipath.mini.train "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    print(f"saved {size / 2**20:.1f} MiB to {args.output} after {result.steps} steps", flush=True)


if __name__ == "__main__":
    main()
