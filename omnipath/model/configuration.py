"""OmniPath configuration: one transformers `PreTrainedConfig` with sub-configs.

`OmniPathConfig` holds
- `vision_config`  the SigLIP tower (transformers `SiglipVisionConfig`; the paper: SO400M/14 at
  384 px, a 27×27 grid),
- `uni_config`     the UNI tower (a timm ViT-L/16 with `init_values=1e-5` and a dynamic image
  size; 224 px, a 14×14 grid),
- `text_config`    the causal LM (any transformers causal-LM config; Llama/Vicuna for 13B),
- `mask_config`    the ResNet mask encoder, the SAM-style mask decoder and the mask loss weights,
- `pgdfc_config`   the prompt-guided detail feature completion settings read by the engine,
plus the multi-scale factors, the projector activation, the `<image>` / `<mask>` token ids and
the box format. Presets: `omnipath_13b_config()` (the paper's shapes; described, never built in
tests) and `tiny_config()` (hidden 32–64, 2 layers, for tests).

Box format (`box_format="rel_xyxy"`): the model writes a box as text,
`[x0, y0, x1, y1]` with `box_decimals` decimals, in the `rel_` frame: fractions 0–1 of the
slide's level-0 width and height (not of the padded square thumbnail).
"""

from __future__ import annotations

import math

from transformers import AutoConfig, LlamaConfig, PreTrainedConfig, SiglipVisionConfig
from transformers.configuration_utils import SubConfigSpec

from omnipath.boxes import BOX_FORMAT_SLIDE
from omnipath.errors import ModelInputError, TokenCountError  # noqa: F401  (re-exported)


class OmniPathUniConfig(PreTrainedConfig):
    """The UNI tower: a timm ViT (ViT-L/16 for UNI) built with `timm.create_model`.

    Layout of its output: B×C×g×g with C = `embed_dim`, g = `image_size // patch_size`.
    `mean`/`std` are the per-channel normalization UNI was trained with (ImageNet).
    """

    model_type = "omnipath_uni"
    base_config_key = "uni_config"

    timm_model_name: str = "vit_large_patch16_224"
    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    init_values: float = 1e-5
    dynamic_img_size: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None

    def __post_init__(self, **kwargs):
        if self.mean is None:
            self.mean = [0.485, 0.456, 0.406]
        if self.std is None:
            self.std = [0.229, 0.224, 0.225]
        super().__post_init__(**kwargs)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class OmniPathMaskConfig(PreTrainedConfig):
    """Mask modules.

    Encoder: torchvision `ResNet(Bottleneck, encoder_layers)` with one input channel, the map
    resized to `encoder_image_size`², its 2048-d pooled feature → linear → D_llm.
    `encoder_width_per_group` is torchvision's bottleneck inner width (64 = ResNet-50).
    Decoder: segment_anything `MaskDecoder` + `TwoWayTransformer` at `transformer_dim`; the mask
    logits come out at 4·g × 4·g over the square thumbnail.
    Loss: `bce_weight`·BCE + `dice_weight`·Dice, scaled by `loss_weight` in the total loss.
    """

    model_type = "omnipath_mask"
    base_config_key = "mask_config"

    encoder_layers: list[int] | None = None
    encoder_width_per_group: int = 64
    encoder_image_size: int = 224
    transformer_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    loss_weight: float = 1.0

    def __post_init__(self, **kwargs):
        if self.encoder_layers is None:
            self.encoder_layers = [3, 4, 6, 3]  # ResNet-50
        super().__post_init__(**kwargs)


class OmniPathPgdfcConfig(PreTrainedConfig):
    """Prompt-guided detail feature completion settings (read by the engine).

    - `num_detail_patches` (S): how many grid cells are read again at high resolution.
    - `tokens_per_patch` (P = p·p): tokens per detail patch after average pooling.
    - `detail_magnification`: objective power (×) at which detail patches are read.
    - `background_threshold`: a grid cell whose tissue fraction is below this is background.
    - `context_fraction`: extra fraction of the cell size read on every side of a cell.
    - `probe_layer`: the LLM layer whose attention (last input token → image tokens) ranks cells.
    - `detail_scale_factors`: the multi-scale factors at which a DETAIL patch is encoded
      (None → [1]: one base-size tile per tower per patch). Multi-scale fusion exists to give
      the low-magnification thumbnail fine detail; a detail patch read at the detail
      magnification already is that fine detail, so magnifying it further only interpolates
      its pixels at k² times the tower cost. The fused map keeps the channel layout of
      `scale_factors` (a slot of a scale not encoded holds the nearest encoded scale's map),
      so the projector and the token count are unchanged. The detail read side is
      max(detail_scale_factors) × SigLIP's base size (`model.detail_side`): magnification
      is kept, the field of view per patch follows the encoder's input.
    """

    model_type = "omnipath_pgdfc"
    base_config_key = "pgdfc_config"

    num_detail_patches: int = 8
    tokens_per_patch: int = 81
    detail_magnification: float = 20.0
    background_threshold: float = 0.2
    context_fraction: float = 0.25
    probe_layer: int = 0
    detail_scale_factors: list[int] | None = None

    @property
    def resolved_detail_scale_factors(self) -> list[int]:
        scales = self.detail_scale_factors
        return [1] if not scales else [int(k) for k in scales]


# Vicuna-13B (LLaVA-1.5-13B's LM); vocabulary 32000 + <image> + <mask>, padded to 32064.
_VICUNA_13B = {
    "vocab_size": 32064,
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 40,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}


class OmniPathConfig(PreTrainedConfig):
    """The whole OmniPath model.

    Fields besides the sub-configs:
    - `scale_factors`: the multi-scale factors k; at k× each tower sees the image at k times
      its base size, cut into k×k base-size tiles.
    - `vision_feature_layer`: SigLIP hidden state used (-1 = the last, after post-layernorm).
    - `projector_hidden_act`: the 2-layer MLP projector's activation.
    - `image_token_id` / `mask_token_id`, `image_token` / `mask_token`: the placeholders.
    - `thumb_side`: side of the square thumbnail the engine renders (None → the largest scale
      times SigLIP's base size).
    - `box_format`, `box_decimals`: see the module docstring.
    """

    model_type = "omnipath"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="siglip_vision_model",
            init_kwargs={
                "hidden_size": 1152,
                "intermediate_size": 4304,
                "num_hidden_layers": 27,
                "num_attention_heads": 16,
                "image_size": 384,
                "patch_size": 14,
                "vision_use_head": False,
            },
        ),
        "uni_config": OmniPathUniConfig,
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="llama", init_kwargs=dict(_VICUNA_13B)
        ),
        "mask_config": OmniPathMaskConfig,
        "pgdfc_config": OmniPathPgdfcConfig,
    }

    vision_config: dict | PreTrainedConfig | None = None
    uni_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    mask_config: dict | PreTrainedConfig | None = None
    pgdfc_config: dict | PreTrainedConfig | None = None
    scale_factors: list[int] | None = None
    vision_feature_layer: int = -1
    projector_hidden_act: str = "gelu"
    image_token_id: int = 32000
    mask_token_id: int = 32001
    image_token: str = "<image>"
    mask_token: str = "<mask>"
    thumb_side: int | None = None
    box_format: str = BOX_FORMAT_SLIDE
    box_decimals: int = 3
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.scale_factors is None:
            self.scale_factors = [1, 2]
        super().__post_init__(**kwargs)
        # The LM ties its own embeddings; mirror its flag so transformers sees it at the top.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self.validate_omnipath()

    def validate_omnipath(self) -> None:
        """Raise `ModelInputError` for settings the model cannot be built with."""
        if not self.scale_factors or any(int(k) < 1 for k in self.scale_factors):
            raise ModelInputError(
                f"scale_factors must be positive integers, got {self.scale_factors}."
            )
        if len(set(self.scale_factors)) != len(self.scale_factors):
            raise ModelInputError(f"scale_factors must not repeat, got {self.scale_factors}.")
        detail_scales = self.pgdfc_config.detail_scale_factors
        if detail_scales is not None and any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in detail_scales
        ):
            raise ModelInputError(
                f"pgdfc detail_scale_factors must be positive integers, got {detail_scales}."
            )
        vocab = self.text_config.vocab_size
        for name in ("image_token_id", "mask_token_id"):
            token_id = getattr(self, name)
            if not 0 <= token_id < vocab:
                raise ModelInputError(
                    f"{name}={token_id} is outside the vocabulary (size {vocab})."
                )
        if self.image_token_id == self.mask_token_id:
            raise ModelInputError("image_token_id and mask_token_id must differ.")
        if self.mask_config.transformer_dim % 8:
            raise ModelInputError(
                f"mask transformer_dim must be a multiple of 8, got {self.mask_config.transformer_dim}."
            )
        p = math.isqrt(self.pgdfc_config.tokens_per_patch)
        if p * p != self.pgdfc_config.tokens_per_patch or p > self.grid:
            raise ModelInputError(
                f"tokens_per_patch must be a square number ≤ {self.grid}², "
                f"got {self.pgdfc_config.tokens_per_patch}."
            )

    @property
    def grid(self) -> int:
        """g: the fused grid is SigLIP's grid (see vision.py for why)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_image_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def vision_channels(self) -> int:
        """C_v: channels of the fused map = scales × (SigLIP width + UNI width)."""
        per_scale = self.vision_config.hidden_size + self.uni_config.embed_dim
        return len(self.scale_factors) * per_scale

    @property
    def resolved_thumb_side(self) -> int:
        if self.thumb_side is not None:
            return self.thumb_side
        return max(self.scale_factors) * self.vision_config.image_size


def omnipath_13b_config() -> OmniPathConfig:
    """The paper's shapes: Vicuna-13B (LLaVA-1.5-13B), SigLIP SO400M/14 @384, UNI ViT-L/16 @224.

    Vocabulary: LLaVA-1.5's 32000 + `<image>` (32000) + `<mask>` (32001), padded to 32064.
    Described here; far too large to build in tests.
    """
    return OmniPathConfig(
        text_config=LlamaConfig(**_VICUNA_13B),
        scale_factors=[1, 2],
        image_token_id=32000,
        mask_token_id=32001,
        pgdfc_config=OmniPathPgdfcConfig(tokens_per_patch=81),
    )


def smollm2_135m_text_config(vocab_size: int = 49152) -> LlamaConfig:
    """SmolLM2-135M's shapes (a Llama with GQA: 9 query heads, 3 key/value heads)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )


# The tiny tokenizer (tokenization.py) fixes these ids; tiny_config must agree with it.
TINY_VOCAB_SIZE = 512
TINY_PAD_ID, TINY_BOS_ID, TINY_EOS_ID, TINY_UNK_ID, TINY_IMAGE_ID, TINY_MASK_ID = range(6)


def tiny_config() -> OmniPathConfig:
    """Test-sized OmniPath: hidden 32–64, 2 layers everywhere, built in well under 2 s on a CPU.

    SigLIP 64 px / patch 8 → g = 8 (64 image tokens); UNI 32 px / patch 8 → 4×4, resampled to
    8×8; scales [1, 2] → thumbnails of 128 px; a Llama LM with GQA (4 heads, 2 kv heads) and
    tied embeddings (as SmolLM2), so the safetensors round trip sees shared tensors.
    """
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
        vision_use_head=False,
    )
    uni = OmniPathUniConfig(
        image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0
    )
    text = LlamaConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=TINY_BOS_ID,
        eos_token_id=TINY_EOS_ID,
        pad_token_id=TINY_PAD_ID,
        tie_word_embeddings=True,
    )
    mask = OmniPathMaskConfig(
        encoder_layers=[1, 1, 1, 1],
        encoder_width_per_group=16,
        encoder_image_size=64,
        transformer_dim=32,
        decoder_depth=2,
        decoder_mlp_dim=64,
        decoder_num_heads=4,
        iou_head_hidden_dim=32,
    )
    pgdfc = OmniPathPgdfcConfig(tokens_per_patch=4)
    return OmniPathConfig(
        vision_config=vision,
        uni_config=uni,
        text_config=text,
        mask_config=mask,
        pgdfc_config=pgdfc,
        scale_factors=[1, 2],
        image_token_id=TINY_IMAGE_ID,
        mask_token_id=TINY_MASK_ID,
    )


def small_config() -> OmniPathConfig:
    """About 100M parameters with realistic grids, for benchmarks (random weights).

    SigLIP 384 px / patch 16 → g = 24 (576 image tokens), UNI 224 px / patch 16 → 14×14
    (resampled to 24×24), scales [1, 2] → 768 px thumbnails; a SmolLM2-like LM (GQA, tied
    embeddings, 49152-token vocabulary) cut to 8 layers of width 512; ResNet-50 mask encoder.
    Its special-token ids are the tiny tokenizer's, so `build_tiny_tokenizer()` drives it.
    """
    vision = SiglipVisionConfig(
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=6,
        image_size=384,
        patch_size=16,
        vision_use_head=False,
    )
    uni = OmniPathUniConfig(image_size=224, patch_size=16, embed_dim=384, depth=6, num_heads=6)
    text = LlamaConfig(
        vocab_size=49152,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=8192,
        bos_token_id=TINY_BOS_ID,
        eos_token_id=TINY_EOS_ID,
        pad_token_id=TINY_PAD_ID,
        tie_word_embeddings=True,
    )
    mask = OmniPathMaskConfig(transformer_dim=128, decoder_mlp_dim=512, iou_head_hidden_dim=128)
    return OmniPathConfig(
        vision_config=vision,
        uni_config=uni,
        text_config=text,
        mask_config=mask,
        pgdfc_config=OmniPathPgdfcConfig(tokens_per_patch=36),
        scale_factors=[1, 2],
        image_token_id=TINY_IMAGE_ID,
        mask_token_id=TINY_MASK_ID,
    )


def llm_heavy_100m_config() -> OmniPathConfig:
    """About 100M parameters in the paper's PROPORTIONS, for benchmarks (random weights).

    LLaVA-1.5-13B, the paper's base, spends ~94 % of its parameters in the LLM; `small_config`
    spends most of its ~100M in the vision towers and the mask encoder instead, which makes
    vision (and so PGDFC's detail encoding) look far costlier next to the LLM than in the
    paper. Here ~90 % sit in the LLM: a SmolLM2-like Llama (GQA, tied embeddings, 49152-token
    vocabulary) of 12 layers at width 640; two small towers with `small_config`'s grids
    (SigLIP 384 px / patch 16 → g = 24, 576 image tokens; UNI 224 px / patch 16 → 14×14),
    4 layers at width 192 each; scales [1, 2] → 768 px thumbnails; a small ResNet mask
    encoder. Its special-token ids are the tiny tokenizer's (`build_tiny_tokenizer()`).
    """
    vision = SiglipVisionConfig(
        hidden_size=192,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=3,
        image_size=384,
        patch_size=16,
        vision_use_head=False,
    )
    uni = OmniPathUniConfig(image_size=224, patch_size=16, embed_dim=192, depth=4, num_heads=3)
    text = LlamaConfig(
        vocab_size=49152,
        hidden_size=640,
        intermediate_size=1792,
        num_hidden_layers=12,
        num_attention_heads=10,
        num_key_value_heads=5,
        max_position_embeddings=8192,
        bos_token_id=TINY_BOS_ID,
        eos_token_id=TINY_EOS_ID,
        pad_token_id=TINY_PAD_ID,
        tie_word_embeddings=True,
    )
    mask = OmniPathMaskConfig(
        encoder_layers=[1, 1, 1, 1],
        encoder_width_per_group=16,
        transformer_dim=128,
        decoder_mlp_dim=512,
        iou_head_hidden_dim=128,
    )
    return OmniPathConfig(
        vision_config=vision,
        uni_config=uni,
        text_config=text,
        mask_config=mask,
        pgdfc_config=OmniPathPgdfcConfig(tokens_per_patch=36),
        scale_factors=[1, 2],
        image_token_id=TINY_IMAGE_ID,
        mask_token_id=TINY_MASK_ID,
    )
