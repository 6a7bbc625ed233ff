"""Stock transformers `llava` checkpoints (LLaVA-1.5 family) behind OmniPath's model interface.

`LlavaAdapter` wraps a `LlavaForConditionalGeneration` and exposes what the engine calls on an
`OmniPathForConditionalGeneration`: `encode_images`, `encode_detail_patches`, `embed_tokens`,
`merge_embeddings`, `language_model`, `num_image_tokens`, `grid`, `thumb_side`,
`config.image_token_id`, `supports_masks` (False). PGDFC needs nothing more (the probe reads
layer 0 of `language_model`; detail patches go through the same CLIP tower and projector), so
it works on these checkpoints without any training. `encode_masks` / `decode_masks` raise
CapabilityError: LLaVA has no mask modules.

Images follow the checkpoint's own recipe: resized (bicubic) to the tower's `image_size`,
normalized with the processor's mean/std (CLIP's when the checkpoint has no processor config),
features from `vision_feature_layer` (one index or a list, concatenated on channels), the CLS
token dropped under the "default" select strategy, then the projector. The engine pads the
slide to a square itself; `pad_fill` tells it the colour: the mean colour int(255·mean) when
the checkpoint pads that way (original LLaVA's image_aspect_ratio "pad", a processor with
`do_pad`), else None (white).

Boxes: the model sees the padded square, and LLaVA-1.5's grounding data (Visual Genome,
RefCOCO) normalise boxes to that square (haotian-liu/LLaVA issue 606), so the adapter
declares the square frame (`boxes.BOX_FORMAT_SQUARE`); the engine un-pads them onto the
slide.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnipath.boxes import BOX_FORMAT_SQUARE
from omnipath.errors import CapabilityError, ModelLoadError

# transformers.utils.constants.OPENAI_CLIP_MEAN / _STD (what LLaVA-1.5's processor uses).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Vision towers the adapter knows, and whether their sequence starts with a CLS token.
_TOWER_HAS_CLS = {"clip_vision_model": True, "siglip_vision_model": False}

NO_MASKS_MESSAGE = (
    "This model cannot produce masks: it is a stock LLaVA checkpoint without OmniPath's mask "
    "modules. Ask for boxes or regions instead, or load an OmniPath checkpoint."
)


class LlavaAdapter(nn.Module):
    """A `LlavaForConditionalGeneration` with OmniPath's model methods.

    Attributes: `llava` (the wrapped model, its only registered submodule), `config` (the
    checkpoint's LlavaConfig, given `mask_token_id = None`, a `pgdfc_config` and the box
    settings the engine reads), `image_mean` / `image_std` (3 floats each), `pad_fill` (the
    RGB the engine pads the square thumbnail with, None for white).
    """

    supports_masks = False

    def __init__(
        self,
        llava: nn.Module,
        *,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        pad: bool = False,
    ) -> None:
        super().__init__()
        self.llava = llava
        self.config = llava.config
        vision = self.config.vision_config
        self._grid = int(vision.image_size) // int(vision.patch_size)
        self._has_cls = _check_tower(self.config)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ModelLoadError(
                "The checkpoint's image processor has an unusable mean/std "
                f"({self.image_mean}, {self.image_std}); expected 3 values each, std > 0."
            )
        self.pad_fill = mean_fill(self.image_mean) if pad else None
        _add_omnipath_settings(self.config, self._grid)
        # A causal-LM object sharing the LLaVA decoder and lm_head (not registered as a
        # submodule: its parameters are llava's and must not be counted or saved twice).
        object.__setattr__(self, "_language_model", _causal_lm_view(llava))

    # --- what the engine reads ---------------------------------------------------------------

    @property
    def language_model(self) -> nn.Module:
        """The causal LM (decoder layers at `language_model.model.layers`, `lm_head`, generate)."""
        return self._language_model

    @property
    def grid(self) -> int:
        """g: the tower's patch grid side (24 for CLIP ViT-L/14 at 336 px)."""
        return self._grid

    @property
    def num_image_tokens(self) -> int:
        """N = g·g tokens per image."""
        return self._grid * self._grid

    @property
    def thumb_side(self) -> int:
        """Side of the square thumbnail the tower expects (336 for LLaVA-1.5)."""
        return int(self.config.vision_config.image_size)

    @property
    def device(self) -> torch.device:
        return self.llava.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llava.dtype

    def get_input_embeddings(self) -> nn.Module:
        return self.llava.get_input_embeddings()

    # --- images -------------------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images B×3×H×W floats in [0, 1] (any H, W; square expected) →
        (projected tokens B×N×D_llm, vision feature map B×C_v×g×g)."""
        features = self._vision_features(images)  # B×N×C_v
        tokens = self._project(features)
        b, n, c = features.shape
        feature_map = features.transpose(1, 2).reshape(b, c, self._grid, self._grid)
        return tokens, feature_map

    def encode_detail_patches(self, images: torch.Tensor, tokens_per_patch: int) -> torch.Tensor:
        """images S×3×H×W in [0, 1] → S×P×D_llm, P = p·p = `tokens_per_patch`.

        Each patch goes through the same tower; its g×g feature map is average-pooled to p×p
        before the projector (pooling features, as OmniPath's multi-scale fusion does, keeps
        the projector's input in the distribution it was trained on).
        """
        from omnipath.model.configuration import ModelInputError

        p = math.isqrt(int(tokens_per_patch)) if int(tokens_per_patch) > 0 else 0
        if p < 1 or p * p != tokens_per_patch or p > self._grid:
            raise ModelInputError(
                f"tokens_per_patch must be a square number between 1 and {self._grid}², "
                f"got {tokens_per_patch}."
            )
        if images.ndim == 4 and images.shape[0] == 0:
            hidden = self.config.text_config.hidden_size
            weight = self.llava.model.multi_modal_projector.linear_1.weight
            return weight.new_zeros((0, p * p, hidden))
        features = self._vision_features(images)  # S×N×C
        s, _, c = features.shape
        grid_map = features.transpose(1, 2).reshape(s, c, self._grid, self._grid)
        pooled = F.adaptive_avg_pool2d(grid_map.float(), p).to(features.dtype)
        return self._project(pooled.flatten(2).transpose(1, 2))  # S×P×D

    def _vision_features(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×H×W in [0, 1] → B×N×C_v: the selected layer(s), CLS dropped when it applies."""
        if images.ndim != 4 or images.shape[1] != 3:
            from omnipath.model.configuration import ModelInputError

            raise ModelInputError(f"Images must be B×3×H×W, got {tuple(images.shape)}.")
        tower = self.llava.model.vision_tower
        param = next(tower.parameters())
        side = self.thumb_side
        pixels = images.to(device=param.device, dtype=torch.float32)
        if pixels.shape[-2:] != (side, side):
            pixels = F.interpolate(
                pixels, size=(side, side), mode="bicubic", align_corners=False, antialias=True
            ).clamp(0.0, 1.0)
        mean = torch.tensor(self.image_mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=pixels.device).view(1, 3, 1, 1)
        pixels = ((pixels - mean) / std).to(param.dtype)
        outputs = tower(pixels, output_hidden_states=True, return_dict=True)
        layers = self.config.vision_feature_layer
        indices = [layers] if isinstance(layers, int) else list(layers)
        start = (
            1 if self._has_cls and self.config.vision_feature_select_strategy == "default" else 0
        )
        selected = [outputs.hidden_states[i][:, start:] for i in indices]
        features = torch.cat(selected, dim=-1)
        if features.shape[1] != self.num_image_tokens:
            raise ModelLoadError(
                f"The vision tower gave {features.shape[1]} tokens per image where "
                f"{self.num_image_tokens} (a {self._grid}×{self._grid} grid) were expected; "
                "this LLaVA variant is not supported."
            )
        return features

    def _project(self, features: torch.Tensor) -> torch.Tensor:
        projector = self.llava.model.multi_modal_projector
        weight = projector.linear_1.weight
        return projector(features.to(device=weight.device, dtype=weight.dtype))

    # --- text ---------------------------------------------------------------------------------

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """B×L token ids → B×L×D_llm input embeddings. Image placeholders are embedded as id 0
        (merge_embeddings replaces them): the `<image>` id that the loader adds to an original
        LLaVA tokenizer lies past the embedding table, like the original's -200."""
        placeholders = input_ids == self.config.image_token_id
        return self.llava.get_input_embeddings()(input_ids.masked_fill(placeholders, 0))

    def merge_embeddings(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        image_tokens: list[torch.Tensor] | torch.Tensor | None,
        mask_embeds: torch.Tensor | None = None,
        mask_input_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Put image tokens at the `<image>` placeholders, in order.

        input_ids B×L, inputs_embeds B×L×D, image_tokens a list of M_i×D (or one M×D / B×N×D
        tensor, or None) whose rows together must equal the number of placeholders; a
        TokenCountError otherwise. `mask_embeds` must be None or empty (CapabilityError).
        Returns a new B×L×D tensor.
        """
        if mask_embeds is not None and mask_embeds.numel() > 0:
            raise CapabilityError(NO_MASKS_MESSAGE)
        from omnipath.model.configuration import TokenCountError

        dim = inputs_embeds.shape[-1]
        if image_tokens is None:
            rows = inputs_embeds.new_zeros(0, dim)
        elif isinstance(image_tokens, torch.Tensor):
            rows = image_tokens.reshape(-1, dim)
        else:
            rows = (
                torch.cat([t.reshape(-1, dim) for t in image_tokens], dim=0)
                if len(image_tokens)
                else inputs_embeds.new_zeros(0, dim)
            )
        placeholders = input_ids == self.config.image_token_id
        count = int(placeholders.sum())
        if count != rows.shape[0]:
            raise TokenCountError(
                f"The text has {count} image placeholders but {rows.shape[0]} image tokens were "
                "given; they must be equal."
            )
        merged = inputs_embeds.clone()
        merged[placeholders] = rows.to(device=merged.device, dtype=merged.dtype)
        return merged

    # --- masks: not available ---------------------------------------------------------------

    def encode_masks(self, maps: torch.Tensor) -> torch.Tensor:
        raise CapabilityError(NO_MASKS_MESSAGE)

    def decode_masks(self, hidden: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        raise CapabilityError(NO_MASKS_MESSAGE)

    # --- a plain forward (training-free use, tests) -------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_targets: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Embed, merge the images' tokens, run the causal LM. Returns its output (loss when
        `labels` are given, logits B×L×V)."""
        if mask_targets is not None:
            raise CapabilityError(NO_MASKS_MESSAGE)
        embeds = self.embed_tokens(input_ids)
        if images is not None:
            tokens, _ = self.encode_images(images)
            embeds = self.merge_embeddings(input_ids, embeds, list(tokens))
        return self.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs
        )


def _check_tower(config: Any) -> bool:
    """Whether the tower's sequence starts with CLS; ModelLoadError for unknown towers or a
    select strategy that would not give g·g tokens."""
    tower_type = getattr(config.vision_config, "model_type", None)
    if tower_type not in _TOWER_HAS_CLS:
        raise ModelLoadError(
            f"This LLaVA checkpoint uses a '{tower_type}' vision tower; the adapter supports "
            f"{', '.join(sorted(_TOWER_HAS_CLS))}."
        )
    has_cls = _TOWER_HAS_CLS[tower_type]
    strategy = config.vision_feature_select_strategy
    if has_cls and strategy != "default":
        raise ModelLoadError(
            f"This LLaVA checkpoint keeps the CLS token (vision_feature_select_strategy="
            f"'{strategy}'), so its image tokens do not form a square grid; PGDFC cannot map "
            "them to the slide. LLaVA-1.5 checkpoints use 'default'."
        )
    if not has_cls and strategy == "default":
        raise ModelLoadError(
            "This LLaVA checkpoint drops the first token of a tower without CLS "
            "(vision_feature_select_strategy='default' on SigLIP), so its image tokens do not "
            "form a square grid; PGDFC cannot map them to the slide."
        )
    return has_cls


def _add_omnipath_settings(config: Any, grid: int) -> None:
    """Give the LlavaConfig the few fields the engine reads on OmniPath's config."""
    from omnipath.model.configuration import OmniPathPgdfcConfig

    if getattr(config, "mask_token_id", None) is None:
        config.mask_token_id = None
    if getattr(config, "pgdfc_config", None) is None:
        # The paper pools 27×27 SigLIP maps to 9×9 per detail patch; keep that ratio (g/3).
        side = max(1, grid // 3)
        config.pgdfc_config = OmniPathPgdfcConfig(tokens_per_patch=side * side)
    config.box_format = getattr(config, "box_format", None) or BOX_FORMAT_SQUARE
    config.box_decimals = getattr(config, "box_decimals", None) or 3


def _causal_lm_view(llava: nn.Module) -> nn.Module:
    """A `*ForCausalLM` whose decoder and lm_head ARE llava's (shared modules, no copy).

    transformers 5 keeps LLaVA's decoder as a base model (`llava.model.language_model`, no
    head) with `lm_head` on the outer model; the engine wants one causal LM with
    `.model.layers`, `lm_head` and `generate`. The shell is built on the meta device (no
    memory), then its two parts are replaced by llava's.
    """
    from transformers import AutoModelForCausalLM

    text_config = llava.config.text_config
    try:
        lm_class = AutoModelForCausalLM._model_mapping[type(text_config)]
    except KeyError as error:
        raise ModelLoadError(
            f"This LLaVA checkpoint's language model ('{text_config.model_type}') has no "
            "causal-LM class in transformers."
        ) from error
    with torch.device("meta"):
        # A copy: building a model may adjust its config (attention implementation).
        shell = lm_class(copy.deepcopy(text_config))
    setattr(shell, lm_class.base_model_prefix, llava.model.language_model)
    shell.lm_head = llava.lm_head
    shell.config = text_config
    shell.generation_config = copy.deepcopy(llava.generation_config)
    if getattr(llava, "hf_quantizer", None) is not None:
        shell.hf_quantizer = llava.hf_quantizer
    leftover = [name for name, p in shell.named_parameters() if p.is_meta]
    if leftover:
        raise ModelLoadError(
            "The LLaVA language model could not be wrapped (unexpected parts: "
            f"{', '.join(leftover[:3])})."
        )
    shell.eval()
    return shell


def mean_fill(image_mean: Sequence[float]) -> tuple[int, int, int]:
    """The padding colour of LLaVA's expand2square (and transformers' LlavaImageProcessor
    with do_pad): int(255·mean) per channel."""
    red, green, blue = (int(255 * value) for value in image_mean)
    return red, green, blue


@dataclass(frozen=True)
class ImageRecipe:
    """A checkpoint's image preprocessing: `mean`/`std` (3 floats each) and `pad` (whether it
    pads to a square of the mean colour)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: bool


def image_recipe(folder: str) -> ImageRecipe:
    """The image recipe from a folder's image-processor config (old preprocessor_config.json
    or transformers 5's processor_config.json): its mean/std, and `do_pad`. CLIP's values and
    no padding when the folder has none (LLaVA-1.5 was trained with CLIP's)."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return ImageRecipe(CLIP_MEAN, CLIP_STD, pad=False)
    # do_pad means "pad to a square of the mean colour" on LLaVA's own processor only.
    pads = type(processor).__name__.startswith("LlavaImageProcessor")
    return ImageRecipe(mean, std, pad=pads and bool(getattr(processor, "do_pad", False)))
