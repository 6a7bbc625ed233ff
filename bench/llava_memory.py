"""GPU memory of the original-LLaVA pathology models, COMPUTED (not measured) from their shapes.

    .venv/bin/python bench/llava_memory.py [--tokens 2048]

Each model is built on the meta device (no memory, no download) from the published shapes of
its parts; parameters are counted per part and priced as OmniPath loads them:
- fp16: every weight 2 bytes;
- 4-bit: the LLM decoder's Linear layers NF4 with double quantization (4 bits + one 8-bit
  scale per 64 weights + one fp32 scale per 256 blocks: 4.127 bits per weight); embeddings,
  norms, LM head, CLIP tower and projector stay 16-bit (`loading.llm_only_skip_modules`);
- plus the KV cache of `--tokens` tokens in fp16 (an answer with 576 thumbnail tokens, S
  detail patches, the question and the answer stays well under 2,048).
CUDA context, allocator slack and activations (a few hundred MB) come on top.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

GIB = 1024**3
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)

# Published shapes: lmsys/vicuna-7b-v1.5 and -13b-v1.5 (LLaVA-1.5, Quilt-LLaVA),
# mistralai/Mistral-7B-Instruct-v0.2 (LLaVA-Med v1.5), openai/clip-vit-large-patch14-336.
LLMS = {
    "vicuna-7b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
    "vicuna-13b": dict(
        model_type="llama",
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
    ),
    "mistral-7b": dict(
        model_type="mistral",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
}
MODELS = {
    "Quilt-LLaVA v1.5 7B (wisdomik/Quilt-Llava-v1.5-7b)": "vicuna-7b",
    "LLaVA-1.5 7B (liuhaotian/llava-v1.5-7b)": "vicuna-7b",
    "LLaVA-1.5 13B (liuhaotian/llava-v1.5-13b)": "vicuna-13b",
    "LLaVA-Med v1.5 7B (microsoft/llava-med-v1.5-mistral-7b)": "mistral-7b",
}


def _parts(llm: str) -> dict[str, int]:
    """Parameter counts: quantizable decoder Linear weights, the rest of the LLM, tower,
    projector; and the KV-cache bytes per token."""
    from transformers import (
        AutoConfig,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    shape = dict(LLMS[llm])
    text = AutoConfig.for_model(shape.pop("model_type"), vocab_size=32000, **shape)
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text))
    decoder = model.model.language_model
    linear = sum(m.weight.numel() for m in decoder.modules() if isinstance(m, nn.Linear))
    llm_total = sum(p.numel() for p in decoder.parameters()) + model.lm_head.weight.numel()
    head_dim = text.hidden_size // text.num_attention_heads
    return {
        "linear": linear,
        "llm_rest": llm_total - linear,
        "tower": sum(p.numel() for p in model.model.vision_tower.parameters()),
        "projector": sum(p.numel() for p in model.model.multi_modal_projector.parameters()),
        "kv_per_token": 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="KV-cache length")
    args = parser.parse_args()
    print(f"computed from the shapes (meta device), KV cache of {args.tokens} tokens in fp16")
    print(
        "| model | LLM params | fp16 weights | 4-bit weights | KV cache | fp16 total | 4-bit total |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, llm in MODELS.items():
        p = _parts(llm)
        sixteen = p["tower"] + p["projector"] + p["llm_rest"]
        fp16 = (sixteen + p["linear"]) * 2
        four = sixteen * 2 + p["linear"] * NF4_BITS / 8
        kv = p["kv_per_token"] * args.tokens
        llm_params = (p["linear"] + p["llm_rest"]) / 1e9
        print(
            f"| {name} | {llm_params:.2f} B | {fp16 / GIB:.1f} GiB | {four / GIB:.1f} GiB | "
            f"{kv / GIB:.2f} GiB | {(fp16 + kv) / GIB:.1f} GiB | {(four + kv) / GIB:.1f} GiB |"
        )


if __name__ == "__main__":
    main()
