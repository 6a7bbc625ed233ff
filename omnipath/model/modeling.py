"""OmniPathForConditionalGeneration: two vision towers with multi-scale fusion, a 2-layer MLP
projector, a transformers causal LM, a ResNet mask encoder and a SAM-style mask decoder.

Layouts: images B×3×H×W float in [0,1] (the square `thumb_` frame); image tokens B×N×D_llm with
N = g·g; fused vision map B×C_v×g×g; mask maps and mask logits K×1×H×W over the square
thumbnail. Token order of an image: row-major over the g×g grid (cell (r, c) → r·g + c).

`<mask>` tokens play two roles:
- input: a `<mask>` whose embedding is replaced by `encode_masks(map)` (a region the user gives);
  by default the first K `<mask>` tokens in reading order when K maps are given.
- output: every other `<mask>`. Its mask is decoded from the LM's last hidden state (after the
  final norm, what the LM head reads) at the position whose next-token prediction is that
  `<mask>` (i.e. position t−1 for a `<mask>` at t, as in LISA). During generation this is the
  hidden state of the step that produced `<mask>`, so no extra forward pass is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import ModelOutput

from omnipath.model.configuration import ModelInputError, OmniPathConfig, TokenCountError
from omnipath.model.mask_modules import MaskDecoderHead, MaskEncoder, mask_loss
from omnipath.model.projector import VisionProjector
from omnipath.model.vision import MultiScaleVision

# Inputs used only in the prefill step of generate(); later steps feed one new token.
_PREFILL_ONLY_INPUTS = (
    "images",
    "detail_images",
    "mask_maps",
    "mask_input_positions",
    "mask_targets",
)


@dataclass
class OmniPathOutput(ModelOutput):
    """Output of `OmniPathForConditionalGeneration.forward`.

    loss = lm_loss + mask_config.loss_weight · mask_loss (either part when only it applies);
    logits B×L×V; mask_logits K×1×4g×4g for the output `<mask>` tokens (in reading order).
    """

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    mask_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask_logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class OmniPathPreTrainedModel(PreTrainedModel):
    config_class = OmniPathConfig
    config: OmniPathConfig
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise OmniPath's own parts the way their libraries do (timm ViT: truncated
        normal 0.02, LayerScale `init_values`; torchvision ResNet: Kaiming fan-out; SAM's
        Fourier features: N(0, 1)). transformers calls this at construction and, after
        `from_pretrained`, for parameters missing from the checkpoint, so a checkpoint without
        (say) the mask modules loads with sane weights, never uninitialised memory. SigLIP and
        the LM are transformers models and initialise themselves."""
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif "LayerNorm" in type(module).__name__ and getattr(module, "weight", None) is not None:
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif type(module).__name__ == "LayerScale":
            init.constant_(module.gamma, module.init_values)
        elif isinstance(module, PositionEmbeddingRandom):
            init.normal_(module.positional_encoding_gaussian_matrix)
        if isinstance(getattr(module, "pos_embed", None), nn.Parameter):  # timm ViT
            init.trunc_normal_(module.pos_embed, std=0.02)
        if isinstance(getattr(module, "cls_token", None), nn.Parameter):
            init.normal_(module.cls_token, std=1e-6)


class OmniPathForConditionalGeneration(OmniPathPreTrainedModel, GenerationMixin):
    """The OmniPath model (see the module docstring for layouts and `<mask>` semantics)."""

    supports_masks = True

    def __init__(self, config: OmniPathConfig) -> None:
        super().__init__(config)
        text_hidden = config.text_config.hidden_size
        self.vision = MultiScaleVision(config)
        self.projector = VisionProjector(
            self.vision.channels, text_hidden, config.projector_hidden_act
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.mask_encoder = MaskEncoder(config.mask_config, text_hidden)
        self.mask_decoder = MaskDecoderHead(config.mask_config, text_hidden, self.vision.channels)
        self.post_init()

    # --- sizes ------------------------------------------------------------------------

    @property
    def grid(self) -> int:
        """g: side of the image-token grid (SigLIP's grid)."""
        return self.vision.grid

    @property
    def num_image_tokens(self) -> int:
        """N = g·g, the same for every scale factor."""
        return self.grid * self.grid

    @property
    def thumb_side(self) -> int:
        """Side (px) of the square thumbnail the engine should render."""
        return self.config.resolved_thumb_side

    @property
    def detail_side(self) -> int:
        """Side (px) of a detail patch at the detail magnification: the encoder's input for
        the scales detail patches are encoded at (pgdfc_config.detail_scale_factors)."""
        scales = self.config.pgdfc_config.resolved_detail_scale_factors
        return max(scales) * self.config.vision_config.image_size

    @property
    def vision_dtype(self) -> torch.dtype:
        return self.projector.linear_1.weight.dtype

    # --- embeddings (transformers plumbing) -------------------------------------------

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def embed_tokens(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """B×L token ids → B×L×D_llm."""
        return self.get_input_embeddings()(input_ids)

    # --- vision -----------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B×3×H×W in [0,1] (any H, W: resized per tower and scale) →
        (tokens B×N×D_llm, fused vision map B×C_v×g×g)."""
        feature_map = self.vision(images)
        tokens = self.projector(self._to_projector(feature_map.flatten(2).transpose(1, 2)))
        return tokens, feature_map

    def encode_detail_patches(self, images: torch.Tensor, tokens_per_patch: int) -> torch.Tensor:
        """S×3×H×W in [0,1] → S×P×D_llm: the same towers and fusion, the fused map
        average-pooled to p×p (P = p·p = tokens_per_patch), then projected. Row-major tokens.

        All S patches go through each tower in one batch, at the scales of
        `pgdfc_config.detail_scale_factors` only (default [1]: one tile per tower per patch;
        see OmniPathPgdfcConfig for why)."""
        p = math.isqrt(int(tokens_per_patch))
        if tokens_per_patch < 1 or p * p != tokens_per_patch or p > self.grid:
            raise ModelInputError(
                f"tokens_per_patch must be a square number between 1 and {self.grid}², "
                f"got {tokens_per_patch}."
            )
        if images.ndim != 4:
            raise ModelInputError(f"Detail patches must be S×3×H×W, got {tuple(images.shape)}.")
        hidden = self.config.text_config.hidden_size
        if images.shape[0] == 0:
            return images.new_zeros((0, p * p, hidden), dtype=self.vision_dtype)
        scales = self.config.pgdfc_config.resolved_detail_scale_factors
        feature_map = self.vision(images, encode_scales=scales)
        pooled = F.adaptive_avg_pool2d(feature_map, p)
        return self.projector(self._to_projector(pooled.flatten(2).transpose(1, 2)))

    def _to_projector(self, features: torch.Tensor) -> torch.Tensor:
        weight = self.projector.linear_1.weight
        return features.to(device=weight.device, dtype=weight.dtype)

    # --- masks ------------------------------------------------------------------------

    def encode_masks(self, maps: torch.Tensor) -> torch.Tensor:
        """B×1×H×W binary maps in {0,1} (thumb frame) → B×D_llm `<mask>` input embeddings."""
        return self.mask_encoder(maps)

    def decode_masks(self, hidden: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        """(hidden B×D_llm, fused vision map B×C_v×g×g) → B×1×4g×4g mask logits over the
        square thumbnail (thumb frame; upsample to thumb_side to draw)."""
        return self.mask_decoder(hidden, feature_map)

    def mask_input_positions(
        self, input_ids: torch.LongTensor, num_mask_inputs: int
    ) -> torch.Tensor:
        """B×L bool: the first `num_mask_inputs` `<mask>` tokens in reading order (the ones
        replaced by mask-encoder embeddings)."""
        is_mask = input_ids == self.config.mask_token_id
        flat = is_mask.flatten()
        available = int(flat.sum())
        if num_mask_inputs > available:
            raise TokenCountError(
                f"{num_mask_inputs} mask maps were given but the text has only {available} "
                f"<mask> tokens (id {self.config.mask_token_id}) to put them in."
            )
        chosen = torch.zeros_like(flat)
        chosen[flat.nonzero().flatten()[:num_mask_inputs]] = True
        return chosen.view_as(is_mask)

    def output_mask_positions(
        self, input_ids: torch.LongTensor, mask_input_positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch index K, hidden-state position K) of the output `<mask>` tokens, reading
        order. The position is t−1 for a `<mask>` at t (the state that predicted it)."""
        is_output = input_ids == self.config.mask_token_id
        if mask_input_positions is not None:
            is_output = is_output & ~mask_input_positions
        batch_idx, token_pos = is_output.nonzero(as_tuple=True)
        if (token_pos == 0).any():
            raise ModelInputError("An output <mask> token cannot be the first token of a sequence.")
        return batch_idx, token_pos - 1

    # --- merging ----------------------------------------------------------------------

    def merge_embeddings(
        self,
        input_ids: torch.LongTensor,
        inputs_embeds: torch.Tensor,
        image_tokens: list[torch.Tensor] | torch.Tensor | None,
        mask_embeds: torch.Tensor | None = None,
        mask_input_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Put image features and mask embeddings into the text embeddings.

        input_ids B×L; inputs_embeds B×L×D; image_tokens: a list of M_i×D (one per image or
        detail block, concatenated in order) or one M×D (or B×N×D) tensor, filling the
        image-token positions in reading order (row by row of the batch); mask_embeds K×D
        fill the `<mask>` positions given by `mask_input_positions` (default: the first K).
        Raises TokenCountError when the counts differ. Returns a new B×L×D tensor.
        """
        dim = inputs_embeds.shape[-1]
        if isinstance(image_tokens, list | tuple):
            parts = [t.reshape(-1, dim) for t in image_tokens]
            features = torch.cat(parts) if parts else inputs_embeds.new_zeros((0, dim))
        elif image_tokens is None:
            features = inputs_embeds.new_zeros((0, dim))
        else:
            if image_tokens.shape[-1] != dim:
                raise ModelInputError(
                    f"Image features have width {image_tokens.shape[-1]}, the LM expects {dim}."
                )
            features = image_tokens.reshape(-1, dim)
        image_slots = input_ids == self.config.image_token_id
        num_slots = int(image_slots.sum())
        if num_slots != features.shape[0]:
            raise TokenCountError(
                f"The text has {num_slots} image placeholder tokens (id {self.config.image_token_id}) "
                f"but {features.shape[0]} image feature vectors were given; each <image> expands to "
                f"{self.num_image_tokens} tokens and each detail patch to tokens_per_patch tokens."
            )
        merged = inputs_embeds
        if num_slots:
            merged = merged.masked_scatter(
                image_slots.unsqueeze(-1), features.to(device=merged.device, dtype=merged.dtype)
            )
        if mask_embeds is not None and mask_embeds.shape[0]:
            if mask_input_positions is None:
                mask_input_positions = self.mask_input_positions(input_ids, mask_embeds.shape[0])
            given = int(mask_input_positions.sum())
            if given != mask_embeds.shape[0]:
                raise TokenCountError(
                    f"{mask_embeds.shape[0]} mask embeddings for {given} <mask> input positions."
                )
            if (input_ids[mask_input_positions] != self.config.mask_token_id).any():
                raise TokenCountError("mask_input_positions must point at <mask> tokens.")
            merged = merged.masked_scatter(
                mask_input_positions.unsqueeze(-1),
                mask_embeds.reshape(-1, dim).to(device=merged.device, dtype=merged.dtype),
            )
        return merged

    # --- forward ----------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        images: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        mask_targets: torch.Tensor | None = None,
        mask_maps: torch.Tensor | None = None,
        mask_input_positions: torch.Tensor | None = None,
        detail_images: list[torch.Tensor | None] | None = None,
        tokens_per_patch: int | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_mask_logits: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> OmniPathOutput:
        """One pass of the LM over text with images (and detail patches, mask inputs) merged in.

        input_ids B×L with each `<image>` already expanded to N image-token ids (plus S·P for
        a sample's detail patches); images B×3×H×W in [0,1] (one thumbnail per sample);
        detail_images: per sample S_b×3×H×W or None (tokens follow the thumbnail's);
        mask_maps K×1×H×W for input `<mask>` tokens; mask_targets K'×1×H×W in {0,1} for the
        output `<mask>` tokens (thumb frame). labels B×L (-100 = ignored) → CE loss.
        `inputs_embeds` bypasses all merging (what generate() and the engine use).
        """
        if cache is None:
            cache = past_key_values
        feature_map = None
        if inputs_embeds is not None and any(
            x is not None for x in (images, detail_images, mask_maps, mask_targets)
        ):
            raise ModelInputError(
                "inputs_embeds are already merged: pass images, detail patches and masks with "
                "input_ids instead."
            )
        if inputs_embeds is None:
            if input_ids is None:
                raise ModelInputError("forward needs input_ids or inputs_embeds.")
            inputs_embeds = self.embed_tokens(input_ids)
            has_image_slots = bool((input_ids == self.config.image_token_id).any())
            prefill = cache is None or cache.get_seq_length() == 0
            image_parts: list[torch.Tensor] = []
            if images is not None:
                if images.shape[0] != input_ids.shape[0]:
                    raise ModelInputError(
                        f"images holds {images.shape[0]} thumbnails for a batch of "
                        f"{input_ids.shape[0]} sequences (one per sequence)."
                    )
                thumb_tokens, feature_map = self.encode_images(images)
                image_parts = list(thumb_tokens)
            if detail_images is not None:
                image_parts = self._with_detail_tokens(
                    image_parts, detail_images, input_ids.shape[0], tokens_per_patch
                )
            if image_parts:
                self._check_rows(input_ids, image_parts)
            mask_embeds = self.encode_masks(mask_maps) if mask_maps is not None else None
            if mask_embeds is not None and mask_input_positions is None:
                mask_input_positions = self.mask_input_positions(input_ids, mask_embeds.shape[0])
            if image_parts or mask_embeds is not None or (has_image_slots and prefill):
                inputs_embeds = self.merge_embeddings(
                    input_ids, inputs_embeds, image_parts, mask_embeds, mask_input_positions
                )

        outputs = self.language_model.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        logits = self.language_model.get_output_embeddings()(
            slice_logits_to_keep(hidden, logits_to_keep)
        )

        lm_loss = None
        if labels is not None:
            lm_loss = self.language_model.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.text_config.vocab_size,
                **kwargs,
            )

        mask_logits = None
        loss_of_masks = None
        if mask_targets is not None or return_mask_logits:
            if feature_map is None or input_ids is None:
                raise ModelInputError("Decoding masks needs input_ids and images in the same call.")
            batch_idx, hidden_pos = self.output_mask_positions(input_ids, mask_input_positions)
            if mask_targets is not None and mask_targets.shape[0] != batch_idx.shape[0]:
                raise TokenCountError(
                    f"The text has {batch_idx.shape[0]} output <mask> tokens but "
                    f"{mask_targets.shape[0]} mask targets were given."
                )
            mask_hidden = hidden[batch_idx.to(hidden.device), hidden_pos.to(hidden.device)]
            mask_logits = self.decode_masks(
                mask_hidden, feature_map[batch_idx.to(feature_map.device)]
            )
            if mask_targets is not None and mask_logits.shape[0]:
                mc = self.config.mask_config
                loss_of_masks = mask_loss(mask_logits, mask_targets, mc.bce_weight, mc.dice_weight)

        loss = None
        if lm_loss is not None or loss_of_masks is not None:
            loss = lm_loss if lm_loss is not None else 0.0
            if loss_of_masks is not None:
                loss = loss + self.config.mask_config.loss_weight * loss_of_masks

        return OmniPathOutput(
            loss=loss,
            lm_loss=lm_loss,
            mask_loss=loss_of_masks,
            logits=logits,
            mask_logits=mask_logits,
            cache=outputs.cache if use_cache is not False else None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _with_detail_tokens(
        self,
        image_parts: list[torch.Tensor],
        detail_images: list[torch.Tensor | None],
        batch: int,
        tokens_per_patch: int | None,
    ) -> list[torch.Tensor]:
        """Per sample: thumbnail tokens (if any) followed by its detail-patch tokens."""
        if len(detail_images) != batch:
            raise ModelInputError(
                f"detail_images needs one entry (or None) per sample: {len(detail_images)} "
                f"for a batch of {batch}."
            )
        per_patch = tokens_per_patch or self.config.pgdfc_config.tokens_per_patch
        empty = self.projector.linear_2.weight.new_zeros((0, self.config.text_config.hidden_size))
        per_row: list[torch.Tensor] = []
        for b, patches in enumerate(detail_images):
            parts = [image_parts[b]] if image_parts else []
            if patches is not None and patches.shape[0]:
                parts.append(self.encode_detail_patches(patches, per_patch).flatten(0, 1))
            per_row.append(torch.cat(parts) if parts else empty)
        return per_row

    def _check_rows(self, input_ids: torch.LongTensor, per_row: list[torch.Tensor]) -> None:
        """Each sequence's image placeholders must match its own features (not only the
        batch total, which would let one sample's features spill into another's text)."""
        slots = (input_ids == self.config.image_token_id).sum(dim=1).tolist()
        for b, (have, given) in enumerate(zip(slots, per_row, strict=True)):
            if have != given.shape[0]:
                raise TokenCountError(
                    f"Sequence {b} has {have} image placeholder tokens but {given.shape[0]} "
                    f"image feature vectors were given for it (thumbnail {self.num_image_tokens} "
                    "tokens + detail patches × tokens_per_patch)."
                )

    # --- generation -------------------------------------------------------------------

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in _PREFILL_ONLY_INPUTS:
                model_inputs.pop(key, None)
        return model_inputs


def register_with_auto() -> None:
    """Let `AutoConfig` / `AutoModelForImageTextToText` resolve model_type "omnipath".

    Explicit (not done at import). Safe to call more than once.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    from omnipath.model.configuration import (
        OmniPathMaskConfig,
        OmniPathPgdfcConfig,
        OmniPathUniConfig,
    )

    for config_class in (
        OmniPathConfig,
        OmniPathUniConfig,
        OmniPathMaskConfig,
        OmniPathPgdfcConfig,
    ):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModelForImageTextToText.register(
        OmniPathConfig, OmniPathForConditionalGeneration, exist_ok=True
    )
