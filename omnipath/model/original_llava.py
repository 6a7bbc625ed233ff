"""Checkpoints in the ORIGINAL LLaVA format (haotian-liu/LLaVA): LLaVA-1.5, Quilt-LLaVA,
LLaVA-Med v1.5. transformers does not read them; this module does, into transformers' own
`LlavaForConditionalGeneration`, which `LlavaAdapter` then puts behind OmniPath's interface.

The format, as those repositories write it:
- config.json: a Llama or Mistral config plus `mm_vision_tower` (the CLIP tower's hub id or
  folder), `mm_projector_type` ("mlp2x_gelu" = Linear, GELU, Linear; "linear"; default
  "linear" as in the original builder), `mm_hidden_size` (the tower's width),
  `mm_vision_select_layer` (-2), `mm_vision_select_feature` ("patch": drop CLS),
  `image_aspect_ratio` ("pad": the image centred on a square of colour int(255·image_mean)),
  `mm_use_im_start_end`. Recognised by `architectures` (LlavaLlamaForCausalLM,
  LlavaMistralForCausalLM) plus `mm_vision_tower`, never by `model_type` alone ("llava" is
  also transformers' own type).
- weights: the language model under Llama/Mistral names (`model.layers.*`,
  `model.embed_tokens`, `model.norm`, `lm_head`), the projector as `model.mm_projector.*`.
  Tower weights that some uploads carry (`model.vision_tower.*`) are ignored: the original
  code loads the tower from `mm_vision_tower`, and so does this module (a folder, the hub
  cache or the hub, through hub.py: offline and not cached is a sentence, not a hang).
- tokenizer: no `<image>` token (the original splices features at the id -200). The loader
  adds `<image>` as a special token at the end of the vocabulary; the adapter never embeds
  it (placeholders are replaced by image features) and the LM head has no row for it, so it
  cannot be generated: the logits are the original model's.

`llava_key` is the weight-name mapping of transformers' `convert_llava_weights_to_hf.py`: the
names a transformers llava file uses. The projector is loaded through it; convert.py's files
(written by save_pretrained from the assembled model) carry exactly these names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from omnipath.errors import ModelLoadError, ModelNotFoundError

if TYPE_CHECKING:
    from omnipath.model.loading import LoadPlan

# The original model classes and the transformers model_type of their language model.
ARCHITECTURES = {"LlavaLlamaForCausalLM": "llama", "LlavaMistralForCausalLM": "mistral"}
PROJECTOR_TYPES = ("mlp2x_gelu", "linear")
SELECT_FEATURES = {"patch": "default", "cls_patch": "full"}  # -> vision_feature_select_strategy
IMAGE_TOKEN = "<image>"
# config.json keys of the original format that are not the language model's.
_NOT_TEXT_KEYS = {
    "architectures",
    "model_type",
    "auto_map",
    "_name_or_path",
    "transformers_version",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "unfreeze_mm_vision_tower",
    "use_mm_proj",
}
_PROJECTOR_PREFIX = "model.mm_projector."
_TOWER_PREFIX = "model.vision_tower."
_LLAVA_PROJECTOR = "multi_modal_projector."


# --- the format ---------------------------------------------------------------------------


def is_original_llava(config: Mapping[str, Any]) -> bool:
    """Whether a config.json (as a dict) is an original-LLaVA checkpoint: a `Llava*ForCausalLM`
    architecture (the original classes' naming) and `mm_vision_tower`."""
    return "mm_vision_tower" in config and bool(llava_architectures(config))


def llava_architectures(config: Mapping[str, Any]) -> list[str]:
    names = config.get("architectures") or []
    return [
        a
        for a in names
        if isinstance(a, str) and a.startswith("Llava") and a.endswith("ForCausalLM")
    ]


def llava_key(original: str, projector_type: str = "mlp2x_gelu") -> str | None:
    """The name a transformers llava checkpoint file gives an original weight (the mapping of
    transformers' convert_llava_weights_to_hf.py; transformers 5 writes and reads these names,
    mapping them onto its module layout, `model.language_model.*`, by itself). None for the
    tower weights some uploads carry (the tower is loaded from `mm_vision_tower`).

    model.mm_projector.0.* -> multi_modal_projector.linear_1.* (.2 -> linear_2; a "linear"
    projector's model.mm_projector.* -> linear_1.*), model.* -> language_model.model.*,
    lm_head.* -> language_model.lm_head.*."""
    if original.startswith(_PROJECTOR_PREFIX):
        rest = original.removeprefix(_PROJECTOR_PREFIX)
        if projector_type == "linear":
            return f"{_LLAVA_PROJECTOR}linear_1.{rest}"
        index, _, name = rest.partition(".")
        if not index.isdigit():  # not an nn.Sequential's: left as is (the shapes check fails)
            return f"{_LLAVA_PROJECTOR}{rest}"
        return f"{_LLAVA_PROJECTOR}linear_{int(index) // 2 + 1}.{name}"
    if original.startswith(_TOWER_PREFIX):
        return None
    return f"language_model.{original}"


@dataclass(frozen=True)
class OriginalLlavaSpec:
    """What an original config.json says, checked. `text_model_type`: "llama" | "mistral";
    `select_strategy`: transformers' vision_feature_select_strategy ("default" drops CLS);
    `pad`: whether images are padded to a square of the mean colour ("pad")."""

    architecture: str
    text_model_type: str
    vision_tower: str
    projector_type: str
    mm_hidden_size: int | None
    select_layer: int
    select_strategy: str
    pad: bool
    config: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> OriginalLlavaSpec:
        """Check an original config.json (`where`: the checkpoint, for messages)."""
        architectures = llava_architectures(config)
        supported = [a for a in architectures if a in ARCHITECTURES]
        if not supported:
            raise ModelLoadError(
                f"The LLaVA checkpoint '{where}' is a {', '.join(architectures)}; OmniPath reads "
                f"original LLaVA checkpoints built on Llama or Mistral ({', '.join(ARCHITECTURES)})."
            )
        tower = config.get("mm_vision_tower")
        if not isinstance(tower, str) or not tower.strip():
            raise ModelLoadError(
                f"The LLaVA checkpoint '{where}' names no vision tower (mm_vision_tower is empty "
                "in its config.json), so its images cannot be encoded."
            )
        projector = config.get("mm_projector_type", "linear")
        if projector not in PROJECTOR_TYPES:
            raise ModelLoadError(
                f"The LLaVA checkpoint '{where}' uses the projector type {projector!r} "
                f"(mm_projector_type); OmniPath reads {' and '.join(PROJECTOR_TYPES)}."
            )
        feature = config.get("mm_vision_select_feature", "patch")
        if feature not in SELECT_FEATURES:
            raise ModelLoadError(
                f"The LLaVA checkpoint '{where}' selects the vision features {feature!r} "
                f"(mm_vision_select_feature); OmniPath reads {' and '.join(SELECT_FEATURES)}."
            )
        aspect = str(config.get("image_aspect_ratio") or "square")
        if "anyres" in aspect:
            raise ModelLoadError(
                f"The LLaVA checkpoint '{where}' tiles images at any resolution "
                f"(image_aspect_ratio {aspect!r}, LLaVA-NeXT); OmniPath reads LLaVA-1.5-style "
                "checkpoints, which pad the image to one square ('pad')."
            )
        if config.get("mm_use_im_start_end"):
            raise ModelLoadError(
                f"The LLaVA checkpoint '{where}' wraps images in start/end tokens "
                "(mm_use_im_start_end), which OmniPath does not support; LLaVA-1.5-style "
                "checkpoints do not use them."
            )
        hidden = config.get("mm_hidden_size")
        return cls(
            architecture=supported[0],
            text_model_type=ARCHITECTURES[supported[0]],
            vision_tower=tower.strip(),
            projector_type=projector,
            mm_hidden_size=int(hidden) if hidden is not None else None,
            select_layer=int(config.get("mm_vision_select_layer", -2)),
            select_strategy=SELECT_FEATURES[feature],
            pad=aspect == "pad",
            config=dict(config),
        )

    def text_config(self) -> Any:
        """The language model's transformers config (LlamaConfig / MistralConfig)."""
        from transformers import AutoConfig

        values = {
            k: v
            for k, v in self.config.items()
            if k not in _NOT_TEXT_KEYS and not k.startswith("mm_")
        }
        text = AutoConfig.for_model(self.text_model_type, **values)
        text.architectures = [f"{type(text).__name__.removesuffix('Config')}ForCausalLM"]
        return text


def read_config(folder: Path) -> dict[str, Any]:
    """config.json as a dict; ModelLoadError when it cannot be read."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"The config.json in '{folder}' cannot be read; the checkpoint is damaged.",
            detail=repr(error),
        ) from error
    if not isinstance(config, dict):
        raise ModelLoadError(f"The config.json in '{folder}' is not a JSON object.")
    return config


# --- the vision tower ---------------------------------------------------------------------


def resolve_vision_tower(name: str, where: str) -> Path:
    """The local folder of the tower `name` (a folder, or a hub id found in the cache or
    downloaded: hub.py's rules, HF_HUB_OFFLINE included); ModelNotFoundError saying which
    checkpoint asked for it otherwise."""
    from omnipath.model.hub import resolve_checkpoint

    try:
        return resolve_checkpoint(name).folder
    except ModelNotFoundError as error:
        raise ModelNotFoundError(
            f"The vision tower '{name}' that the LLaVA checkpoint '{where}' names "
            f"(mm_vision_tower) is not available: {error.message}",
            detail=error.detail,
        ) from error


def vision_config(folder: Path, name: str) -> Any:
    """The CLIPVisionConfig of a tower folder (a CLIP vision model, or a whole CLIP model as
    openai/clip-vit-large-patch14-336 is)."""
    from transformers import CLIPVisionConfig

    model_type = read_config(folder).get("model_type")
    if model_type not in ("clip", "clip_vision_model"):
        raise ModelLoadError(
            f"The vision tower '{name}' is a '{model_type}' model; original LLaVA checkpoints "
            "use a CLIP vision tower."
        )
    return CLIPVisionConfig.from_pretrained(folder, local_files_only=True)


# --- the projector ------------------------------------------------------------------------


class LinearProjector(nn.Module):
    """The original "linear" projector (one Linear), named like LlavaMultiModalProjector's
    first layer: C_v → D_llm."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_1(image_features)


def _weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files, safetensors preferred; each listed once."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ModelLoadError(
                    f"The weight index '{index}' cannot be read; the checkpoint is damaged.",
                    detail=repr(error),
                ) from error
            return [folder / f for f in sorted(set(weight_map.values()))]
        if (folder / single).is_file():
            return [folder / single]
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def read_projector_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The `model.mm_projector.*` tensors (original names), read without loading the rest of
    the checkpoint (safetensors: by name; .bin: memory-mapped)."""
    found: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                    if key.startswith(_PROJECTOR_PREFIX):
                        found[key] = handle.get_tensor(key)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a pre-zip-format pickle cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            found.update({k: v for k, v in state.items() if k.startswith(_PROJECTOR_PREFIX)})
    if not found:
        raise ModelLoadError(
            f"The LLaVA checkpoint in '{folder}' has no projector weights (model.mm_projector.*); "
            "it is incomplete, or a language model without its LLaVA projector."
        )
    return found


def build_projector(
    spec: OriginalLlavaSpec, llava_config: Any, weights: Mapping[str, torch.Tensor], where: str
) -> nn.Module:
    """The projector module (LlavaMultiModalProjector, or LinearProjector) with the
    checkpoint's weights; ModelLoadError when their names or shapes do not fit."""
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    if spec.projector_type == "linear":
        projector: nn.Module = LinearProjector(
            llava_config.vision_config.hidden_size, llava_config.text_config.hidden_size
        )
    else:
        projector = LlavaMultiModalProjector(llava_config)
    state = {}
    for key, tensor in weights.items():
        name = llava_key(key, spec.projector_type)
        state[(name or key).removeprefix(_LLAVA_PROJECTOR)] = tensor
    expected = projector.state_dict()
    problems = sorted(set(expected) ^ set(state)) or [
        f"{k} {tuple(state[k].shape)} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if problems:
        raise ModelLoadError(
            f"The projector weights of '{where}' do not fit a '{spec.projector_type}' projector "
            f"from {llava_config.vision_config.hidden_size} to "
            f"{llava_config.text_config.hidden_size} features ({'; '.join(problems[:3])}).",
        )
    projector.load_state_dict(state)
    return projector


def check_tower_width(spec: OriginalLlavaSpec, tower_config: Any, where: str) -> None:
    """mm_hidden_size must be the tower's width (it is the projector's input size)."""
    width = int(tower_config.hidden_size)
    if spec.mm_hidden_size is not None and spec.mm_hidden_size != width:
        raise ModelLoadError(
            f"The LLaVA checkpoint '{where}' says its vision features are {spec.mm_hidden_size} "
            f"wide (mm_hidden_size) but its vision tower '{spec.vision_tower}' gives {width}; "
            "the checkpoint and the tower do not belong together."
        )


# --- the whole model ----------------------------------------------------------------------


@dataclass
class OriginalLlava:
    """A loaded original checkpoint: `llava` (LlavaForConditionalGeneration), its `tokenizer`
    (with `<image>` added), `spec`, the tower's image `mean`/`std`."""

    llava: nn.Module
    tokenizer: Any
    spec: OriginalLlavaSpec
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]


def add_image_token(tokenizer: Any) -> int:
    """The id of `<image>` in `tokenizer`, added as a special token when absent."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        from tokenizers import AddedToken

        token = AddedToken(IMAGE_TOKEN, special=True, normalized=False)
        tokenizer.add_tokens([token], special_tokens=True)  # as convert_llava_weights_to_hf
    return int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))


def load_original_llava(folder: Path, model_id: str, plan: LoadPlan) -> OriginalLlava:
    """Read an original-LLaVA folder into a LlavaForConditionalGeneration as `plan` asks (the
    LLM quantized when asked; tower and projector in `plan.dtype`)."""
    from transformers import AutoModelForCausalLM, CLIPVisionModel, LlavaConfig

    from omnipath.model.llava_adapter import image_recipe
    from omnipath.model.loading import _from_pretrained, _load_tokenizer

    spec = OriginalLlavaSpec.from_config(read_config(folder), model_id)
    tower_folder = resolve_vision_tower(spec.vision_tower, model_id)
    tower_config = vision_config(tower_folder, spec.vision_tower)
    check_tower_width(spec, tower_config, model_id)
    projector_weights = read_projector_weights(folder)  # before anything big is loaded
    text_config = spec.text_config()
    tokenizer = _load_tokenizer(folder, model_id, config=text_config)
    image_token_id = add_image_token(tokenizer)

    lm = _from_pretrained(
        AutoModelForCausalLM,
        folder,
        plan,
        config=text_config,
        skip_modules=["lm_head"],
        complete=True,
    )
    tower = _from_pretrained(CLIPVisionModel, tower_folder, plan.unquantized(), complete=True)
    num_tokens = (tower_config.image_size // tower_config.patch_size) ** 2
    config = LlavaConfig(
        vision_config=tower.config,
        text_config=lm.config,
        image_token_index=image_token_id,
        image_seq_length=num_tokens,
        projector_hidden_act="gelu",
        vision_feature_layer=spec.select_layer,
        vision_feature_select_strategy=spec.select_strategy,
        multimodal_projector_bias=True,
    )
    projector = build_projector(spec, config, projector_weights, model_id)
    projector = projector.to(device=next(tower.parameters()).device, dtype=plan.dtype)
    llava = assemble_llava(config, lm, tower, projector)
    recipe = image_recipe(str(tower_folder))
    return OriginalLlava(llava.eval(), tokenizer, spec, recipe.mean, recipe.std)


def assemble_llava(config: Any, lm: nn.Module, tower: nn.Module, projector: nn.Module) -> Any:
    """A LlavaForConditionalGeneration made of loaded parts (built on the meta device, its
    parts then replaced: no memory spent on weights thrown away)."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    llava.model.vision_tower = tower
    llava.model.multi_modal_projector = projector
    llava.model.language_model = lm.model
    llava.lm_head = lm.lm_head
    llava.config = config
    llava.model.config = config
    llava.generation_config = lm.generation_config
    if getattr(lm, "hf_quantizer", None) is not None:
        llava.hf_quantizer = lm.hf_quantizer
    leftover = [
        name for name, p in [*llava.named_parameters(), *llava.named_buffers()] if p.is_meta
    ]
    if leftover:
        raise ModelLoadError(
            f"The LLaVA model could not be assembled (parts left empty: {', '.join(leftover[:3])})."
        )
    return llava
