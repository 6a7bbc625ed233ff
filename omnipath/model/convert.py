"""Convert an original-LLaVA checkpoint into transformers' llava format.

    python -m omnipath.model.convert SRC DST [--dtype float16] [--conversation vicuna_v1]

SRC: an original-LLaVA folder or hub id (LLaVA-1.5, Quilt-LLaVA, LLaVA-Med; see
original_llava.py), its vision tower found as `load_model` finds it. DST: a new (or empty)
folder that `LlavaForConditionalGeneration.from_pretrained` and `LlavaProcessor.from_pretrained`
read, and that `load_model` loads as a "llava" checkpoint.

What is written, following transformers' `convert_llava_weights_to_hf.py`:
- the weights under transformers' names (`original_llava.llava_key`), the CLIP tower's own
  weights under `model.vision_tower.*`;
- the tokenizer with `<image>` (and `<pad>` when it had no padding token) added, the
  embedding table and LM head grown to a multiple of 64 rows; the new rows are the mean of
  the old ones (transformers' script samples around that mean; the mean keeps the output
  deterministic). The original vocabulary's logits are unchanged;
- a LlavaProcessor: LlavaImageProcessor with the tower's mean/std and `do_pad` for
  image_aspect_ratio "pad" (the mean-colour square of the original), and the chat template
  (the tokenizer's own, else the checkpoint's conversation, or `--conversation`).

Written into a temporary folder next to DST and renamed at the end: a failed conversion
leaves nothing behind. Precision: `--dtype`, default the checkpoint's own (float16 for the
released models); runs on the CPU and needs about the checkpoint's size in memory.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from omnipath.errors import ModelLoadError, OmniPathError

PAD_TO_MULTIPLE = 64


def convert(
    source: str,
    destination: str | Path,
    *,
    dtype: str | None = None,
    conversation: str | None = None,
) -> Path:
    """Convert `source` (folder or hub id) into the new folder `destination`; returns it.
    ModelLoadError (and its subclasses) with a sentence for anything that stops it."""
    from omnipath.model.conversation import checkpoint_conversation, choose_conversation
    from omnipath.model.hub import resolve_checkpoint
    from omnipath.model.loading import DTYPES, LoadPlan, checkpoint_kind
    from omnipath.model.original_llava import load_original_llava

    target = Path(destination).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ModelLoadError(
            f"'{target}' already exists and is not an empty folder; give a new folder to "
            "write the converted checkpoint into."
        )
    if dtype is not None and dtype not in DTYPES:
        raise ModelLoadError(f"The dtype {dtype!r} is not known; use one of {', '.join(DTYPES)}.")
    checkpoint = resolve_checkpoint(source)
    if checkpoint_kind(checkpoint.folder) != "llava_original":
        raise ModelLoadError(
            f"'{source}' is not an original LLaVA checkpoint (LlavaLlamaForCausalLM or "
            "LlavaMistralForCausalLM with mm_vision_tower); only those need converting."
        )
    from omnipath.model.original_llava import read_config

    torch_dtype = DTYPES[dtype or _checkpoint_dtype(read_config(checkpoint.folder))]
    plan = LoadPlan(device="cpu", dtype=torch_dtype, quantization=None, attn_implementation="sdpa")
    original = load_original_llava(checkpoint.folder, checkpoint.model_id, plan)
    tokenizer = original.tokenizer
    fallback = checkpoint_conversation(original.spec.config, [checkpoint.model_id])
    choose_conversation(tokenizer, conversation, fallback)
    grow_vocabulary(original.llava, tokenizer)

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        original.llava.save_pretrained(scratch)
        _processor(original, tokenizer).save_pretrained(scratch)
        if target.exists():
            target.rmdir()  # empty, checked above
        scratch.rename(target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target


def _checkpoint_dtype(config: dict) -> str:
    """The dtype the checkpoint was saved in (float32 when it does not say)."""
    name = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return name if name in ("float16", "bfloat16", "float32") else "float32"


def grow_vocabulary(llava: Any, tokenizer: Any) -> None:
    """Give the tokenizer a `<pad>` when it has none, then grow the embedding table and the
    LM head to len(tokenizer) rounded up to PAD_TO_MULTIPLE rows, new rows = the mean row."""
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    embeddings = llava.get_input_embeddings()
    old_rows = embeddings.weight.shape[0]
    rows = -(-len(tokenizer) // PAD_TO_MULTIPLE) * PAD_TO_MULTIPLE
    if rows <= old_rows:
        return
    llava.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        for table in (llava.get_input_embeddings().weight, llava.get_output_embeddings().weight):
            table[old_rows:] = table[:old_rows].float().mean(dim=0).to(table.dtype)


def _processor(original: Any, tokenizer: Any) -> Any:
    """The LlavaProcessor of the converted folder (see the module docstring)."""
    from transformers import LlavaImageProcessor, LlavaProcessor

    vision = original.llava.config.vision_config
    side = int(vision.image_size)
    image_processor = LlavaImageProcessor(
        do_pad=original.spec.pad,
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_mean=list(original.image_mean),
        image_std=list(original.image_std),
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=int(vision.patch_size),
        vision_feature_select_strategy=original.spec.select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS
        chat_template=tokenizer.chat_template,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from omnipath.model.conversation import CONVERSATIONS

    parser = argparse.ArgumentParser(
        prog="python -m omnipath.model.convert",
        description="Convert an original-LLaVA checkpoint (LLaVA-1.5, Quilt-LLaVA, LLaVA-Med) "
        "into transformers' llava format.",
    )
    parser.add_argument("source", help="the original checkpoint: a folder or a hub id")
    parser.add_argument("destination", help="a new folder for the converted checkpoint")
    parser.add_argument("--dtype", help="float16, bfloat16 or float32 (default: the checkpoint's)")
    parser.add_argument(
        "--conversation",
        choices=list(CONVERSATIONS),
        help="chat template to store (default: the tokenizer's own, else the checkpoint's)",
    )
    args = parser.parse_args(argv)
    try:
        written = convert(
            args.source, args.destination, dtype=args.dtype, conversation=args.conversation
        )
    except OmniPathError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
