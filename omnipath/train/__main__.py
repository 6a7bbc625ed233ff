"""Train an OmniPath model on a conversation dataset (omnipath.train.data format).

One process (CPU or one GPU):

    python -m omnipath.train --model tiny --data data/train.json --output runs/tiny
    python -m omnipath.train --model path/to/checkpoint --data train.json --output runs/x --lora

Several GPUs (data parallel; each process gets its share of every batch):

    accelerate launch --num_processes 8 -m omnipath.train --model path/to/ckpt \\
        --data train.json --output runs/x --batch-size 4 --grad-accum 4
    torchrun --nproc_per_node 8 -m omnipath.train --model path/to/ckpt --data train.json ...

The global batch is processes × batch-size × grad-accum (the paper: 128). DeepSpeed ZeRO-2
goes through `accelerate config` (choose DeepSpeed, stage 2) and the same launch line.
A run continues from the newest checkpoint in --output unless --no-resume is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _load(source: str):
    """(model, tokenizer) for "mini" (omnipath-mini to train: pretrained SmolLM2, fresh towers),
    else what the server would load from `source` ("tiny", a checkpoint folder or hub id), in
    float32 on the CPU (the trainer places it): one loader for training and serving."""
    if source == "mini":
        from omnipath.mini.model import build_mini_for_training

        return build_mini_for_training()
    from omnipath.model.loading import LoadOptions, load_model

    loaded = load_model(source, LoadOptions(dtype="float32", device="cpu"))
    return loaded.model, loaded.tokenizer


def main(argv: list[str] | None = None) -> None:
    from omnipath.train.trainer import TrainConfig

    defaults = TrainConfig(output_dir="")
    parser = argparse.ArgumentParser(
        prog="python -m omnipath.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help='"tiny", "mini" or a checkpoint folder')
    parser.add_argument("--data", required=True, type=Path, help="train .json / .jsonl")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--grad-accum", type=int, default=defaults.grad_accum)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--new-module-lr", type=float, default=None)
    parser.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio)
    parser.add_argument("--ce-weight", type=float, default=defaults.ce_weight)
    parser.add_argument("--mask-weight", type=float, default=defaults.mask_weight)
    parser.add_argument("--bce-weight", type=float, default=defaults.bce_weight)
    parser.add_argument("--dice-weight", type=float, default=defaults.dice_weight)
    parser.add_argument(
        "--probe-weight",
        type=float,
        default=defaults.probe_weight,
        help="probe-attention loss on records with an 'attend' map (0 = the paper's recipe)",
    )
    parser.add_argument("--lora", action="store_true", help="LoRA on the LM; the rest in full")
    parser.add_argument("--lora-r", type=int, default=defaults.lora_r)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--save-every", type=int, default=defaults.save_every)
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from omnipath.train.collator import ConversationCollator
    from omnipath.train.data import ConversationDataset
    from omnipath.train.trainer import train

    torch.manual_seed(args.seed)
    model, tokenizer = _load(args.model)
    config = model.config
    dataset = ConversationDataset(
        args.data, thumb_side=model.thumb_side, detail_side=model.detail_side
    )
    collator = ConversationCollator(
        tokenizer,
        image_token_id=config.image_token_id,
        mask_token_id=config.mask_token_id,
        num_image_tokens=model.num_image_tokens,
        tokens_per_patch=config.pgdfc_config.tokens_per_patch,
        max_length=args.max_length,
    )
    train_config = TrainConfig(
        output_dir=str(args.output),
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        new_module_lr=args.new_module_lr,
        warmup_ratio=args.warmup_ratio,
        ce_weight=args.ce_weight,
        mask_weight=args.mask_weight,
        bce_weight=args.bce_weight,
        dice_weight=args.dice_weight,
        probe_weight=args.probe_weight,
        lora=args.lora,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        gradient_checkpointing=args.gradient_checkpointing,
        precision=args.precision,
        save_every=args.save_every,
        seed=args.seed,
    )
    result = train(
        model, dataset, collator, train_config, tokenizer=tokenizer, resume=not args.no_resume
    )
    print(
        f"{result.steps} steps; last loss {result.losses[-1]:.4f}; checkpoint {result.checkpoint}"
    )


if __name__ == "__main__":
    main()
