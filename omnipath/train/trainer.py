"""The training loop: the paper's single-stage recipe, on one CPU or many GPUs.

Recipe (arXiv 2412.09521): one stage, every module trainable (vision towers, projector, LM,
mask encoder and decoder), AdamW at lr 2e-5 with a cosine schedule after a linear warmup.
Options: LoRA on the LM (the towers, projector and mask modules stay fully trainable; only
the `<image>`/`<mask>` rows of the embedding are trained), gradient checkpointing, bf16 on
GPU, a separate learning rate for freshly initialised modules (for the small CPU-trained
models, whose towers start from random weights).

Loss = ce_weight · next-token CE + mask_weight · (bce_weight · BCE + dice_weight · Dice); the
model computes the two parts in its forward (`lm_loss`, `mask_loss`), the BCE/Dice weights
live in `config.mask_config` so they are saved with every checkpoint. Optionally
+ probe_weight · L_probe, the probe-attention loss on records with an `attend` map
(`omnipath.train.probe_loss`; 0 by default, as in the paper).

Checkpoints: `output_dir/checkpoint-NNNNNNN/` holds the model in `save_pretrained` format
(the full model; with LoRA the PEFT adapter plus the fully trained modules) and
`trainer_state.pt` (optimizer, scheduler, step, RNG). `train(..., resume=True)` continues
from the newest one with the same data order. Multi-GPU: launch the CLI with `accelerate
launch` or `torchrun` (see omnipath/train/__main__.py); data-parallel (DDP) is what is tested.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from omnipath.errors import OmniPathError
from omnipath.train.probe_loss import (
    captured_decoder_inputs,
    omnipath_of,
    probe_attention_loss,
    split_probe_inputs,
)

LORA_LM_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Everything of OmniPath except the language model (fully trained, also under LoRA).
NON_LM_MODULES = ("vision", "projector", "mask_encoder", "mask_decoder")
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.pt"


class TrainingError(OmniPathError):
    """Training cannot start or continue (bad settings, a broken checkpoint, NaN loss)."""


@dataclass
class TrainConfig:
    """Settings of one training run (defaults: the paper's recipe, one process)."""

    output_dir: str
    epochs: float = 2.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 1  # per process
    grad_accum: int = 1
    lr: float = 2e-5
    new_module_lr: float | None = None  # vision/projector/mask modules; None = lr
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    ce_weight: float = 1.0
    mask_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    probe_weight: float = 0.0  # probe-attention loss (omnipath.train.probe_loss); 0 = paper
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # Modules not trained in this run (names of NON_LM_MODULES, e.g. ("vision",) for a stage
    # that trains on towers pretrained before it); they stay frozen after it.
    frozen_modules: tuple[str, ...] = ()
    gradient_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    save_every: int = 200  # optimizer steps; the last step is always saved
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    progress: bool = True
    time_limit_s: float | None = None  # stop (and save) after this much training time
    extra: dict = field(default_factory=dict)  # free-form notes saved with the run

    def validate(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1:
            raise TrainingError("batch_size and grad_accum must be at least 1.")
        if self.lr <= 0 or (self.new_module_lr is not None and self.new_module_lr <= 0):
            raise TrainingError("Learning rates must be positive.")
        if self.max_steps is None and self.epochs <= 0:
            raise TrainingError("Give epochs > 0 or max_steps.")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainingError("max_steps must be at least 1.")
        if not 0 <= self.warmup_ratio < 1:
            raise TrainingError("warmup_ratio must be in [0, 1).")
        if self.probe_weight < 0:
            raise TrainingError("probe_weight must be zero or positive.")
        unknown = set(self.frozen_modules) - set(NON_LM_MODULES)
        if unknown:
            raise TrainingError(
                f"Cannot freeze {sorted(unknown)}: frozen_modules may name {NON_LM_MODULES}."
            )


@dataclass
class TrainResult:
    steps: int
    losses: list[float]  # mean total loss of each optimizer step
    lm_losses: list[float]
    mask_losses: list[float]
    probe_losses: list[float]  # NaN for steps without a probe target
    checkpoint: Path | None
    model: torch.nn.Module  # the trained model (PEFT-wrapped with LoRA)


class EpochSampler(Sampler[int]):
    """A fixed-seed shuffle per epoch (seed + epoch), so a resumed run sees the same order."""

    def __init__(self, length: int, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


# --- model preparation ------------------------------------------------------------------------


def apply_lora(model, config: TrainConfig):
    """Wrap `model` with PEFT LoRA on the LM's linear layers; the non-LM modules are saved and
    trained in full; of the token embedding only the `<image>`/`<mask>` rows are trained."""
    from peft import LoraConfig, get_peft_model

    targets = r".*language_model\..*\.(" + "|".join(LORA_LM_MODULES) + r")$"
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        modules_to_save=list(NON_LM_MODULES),
        # the new rows in the input embedding AND in the LM head: PEFT does not see the LM's
        # tied weights through OmniPath, and without the head row the model never learns to
        # emit <mask>
        trainable_token_indices={
            "embed_tokens": [model.config.image_token_id, model.config.mask_token_id],
            "lm_head": [model.config.image_token_id, model.config.mask_token_id],
        },
    )
    return get_peft_model(model, lora_config)


def freeze_modules(model, names: Sequence[str]) -> None:
    """requires_grad off for every parameter under a module called one of `names` (the
    modules themselves and PEFT's trained copies of them)."""
    if not names:
        return
    pattern = re.compile(r"(^|\.)(" + "|".join(map(re.escape, names)) + r")\.")
    for name, param in model.named_parameters():
        if pattern.search(name):
            param.requires_grad_(False)


def _param_groups(model, config: TrainConfig) -> list[dict]:
    new_lr = config.new_module_lr or config.lr
    pattern = re.compile(r"(^|\.)(" + "|".join(NON_LM_MODULES) + r")\.")
    groups: dict[str, list] = {"lm": [], "new": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["new" if pattern.search(name) else "lm"].append(param)
    return [
        {"params": groups["lm"], "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": groups["new"], "lr": new_lr, "weight_decay": config.weight_decay},
    ]


def _apply_loss_weights(model, config: TrainConfig) -> None:
    mask_config = model.config.mask_config
    mask_config.bce_weight = config.bce_weight
    mask_config.dice_weight = config.dice_weight
    # mask_weight is applied here, not through the model's loss_weight (see _step_loss)


def _step_loss(
    outputs, config: TrainConfig, probe: torch.Tensor | None = None
) -> tuple[torch.Tensor, float, float, float]:
    """(weighted total, lm, mask, probe); a missing part is NaN."""
    parts = [
        (config.ce_weight, outputs.lm_loss),
        (config.mask_weight, outputs.mask_loss),
        (config.probe_weight, probe),
    ]
    terms = [weight * value for weight, value in parts if value is not None]
    if outputs.lm_loss is None and outputs.mask_loss is None:
        raise TrainingError("A batch produced no loss: it has neither labels nor mask targets.")
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    values = [float(v.detach()) if v is not None else float("nan") for _, v in parts]
    return total, values[0], values[1], values[2]


def _forward(model, batch: dict, config: TrainConfig, device) -> tuple[object, torch.Tensor | None]:
    """The model's outputs on a collator batch, and L_probe when probe_weight > 0."""
    model_inputs, probe_inputs = split_probe_inputs(_batch_to(batch, device))
    if config.probe_weight <= 0 or not probe_inputs:
        return model(**model_inputs), None
    omnipath_model = omnipath_of(model)
    with captured_decoder_inputs(omnipath_model) as kept:
        outputs = model(**model_inputs)
    probe = probe_attention_loss(
        omnipath_model, kept["inputs_embeds"], model_inputs["input_ids"], **probe_inputs
    )
    return outputs, probe


# --- checkpoints ------------------------------------------------------------------------------


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders under `output_dir`, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def _load_model_weights(model, checkpoint: Path) -> None:
    """Load a `save_pretrained` folder written by `_save_checkpoint` into `model` in place."""
    from safetensors.torch import load_file

    adapter = checkpoint / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter))
        return
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        from transformers.modeling_utils import load_sharded_checkpoint

        load_sharded_checkpoint(model, checkpoint, strict=False)
    else:
        state = load_file(checkpoint / "model.safetensors")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise TrainingError(
                f"The checkpoint {checkpoint.name} does not fit this model.",
                detail=f"unexpected keys: {unexpected[:5]}",
            )
    model.tie_weights()


def _save_checkpoint(
    accelerator, model, tokenizer, optimizer, scheduler, state: dict, config: TrainConfig
) -> Path:
    checkpoint = Path(config.output_dir) / f"{CHECKPOINT_PREFIX}{state['step']:07d}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        checkpoint.mkdir(parents=True, exist_ok=True)
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(checkpoint)
        if tokenizer is not None:
            tokenizer.save_pretrained(checkpoint)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
                "python_rng": random.getstate(),
                "torch_rng": torch.get_rng_state(),
            },
            checkpoint / STATE_FILE,
        )
        (checkpoint / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
        for old in list_checkpoints(config.output_dir)[: -config.keep_checkpoints]:
            for path in sorted(old.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            old.rmdir()
    accelerator.wait_for_everyone()
    return checkpoint


# --- the loop ---------------------------------------------------------------------------------


def _batch_to(batch: dict, device: torch.device) -> dict:
    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return {key: move(value) for key, value in batch.items()}


def train(
    model,
    train_dataset: Dataset,
    collator,
    config: TrainConfig,
    *,
    tokenizer=None,
    resume: bool = True,
) -> TrainResult:
    """Train `model` (an OmniPathForConditionalGeneration) on `train_dataset`.

    With `resume`, continues from the newest checkpoint in `config.output_dir`. Returns the
    per-step losses and the last checkpoint. Raises TrainingError on bad settings or a
    non-finite loss.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    config.validate()
    if len(train_dataset) == 0:
        raise TrainingError("The training set is empty.")
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "fp32"
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        mixed_precision="bf16" if precision == "bf16" else "no",
    )
    set_seed(config.seed)
    _apply_loss_weights(model, config)
    if config.gradient_checkpointing:
        # on the plain model, before PEFT wraps it; non-reentrant works with frozen inputs
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    if config.lora and not hasattr(model, "peft_config"):  # not wrapped by an earlier stage
        model = apply_lora(model, config)
    elif not config.lora:
        for param in model.parameters():
            param.requires_grad_(True)
    freeze_modules(model, config.frozen_modules)
    model.train()

    sampler = EpochSampler(len(train_dataset), config.seed)
    loader = DataLoader(
        train_dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collator
    )
    batches_per_epoch = math.ceil(len(loader) / accelerator.num_processes)
    steps_per_epoch = max(1, batches_per_epoch // config.grad_accum)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr)
    # accelerate's scheduler wrapper steps once per process for every optimizer step
    scale = accelerator.num_processes
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, round(config.warmup_ratio * total_steps) * scale, total_steps * scale
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    state = {
        "step": 0,
        "epoch": 0,
        "batch_in_epoch": 0,
        "losses": [],
        "lm": [],
        "mask": [],
        "probe": [],
    }
    checkpoints = list_checkpoints(config.output_dir) if resume else []
    if checkpoints:
        latest = checkpoints[-1]
        _load_model_weights(accelerator.unwrap_model(model), latest)
        saved = torch.load(latest / STATE_FILE, weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = {"probe": [], **saved["state"]}  # runs saved before the probe loss
        random.setstate(saved["python_rng"])
        torch.set_rng_state(saved["torch_rng"])

    bar = tqdm(
        total=total_steps,
        initial=state["step"],
        desc="training",
        disable=not (config.progress and accelerator.is_local_main_process),
    )
    last_checkpoint = checkpoints[-1] if checkpoints else None
    step_total = step_lm = step_mask = step_probe = 0.0
    micro = probe_micro = 0
    started = time.monotonic()
    while state["step"] < total_steps:
        sampler.set_epoch(state["epoch"])
        epoch_loader = accelerator.skip_first_batches(loader, state["batch_in_epoch"])
        for batch in epoch_loader:
            state["batch_in_epoch"] += 1
            with accelerator.accumulate(model):
                outputs, probe = _forward(model, batch, config, accelerator.device)
                loss, lm_value, mask_value, probe_value = _step_loss(outputs, config, probe)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"The loss became {float(loss)} at step {state['step']}; "
                        "lower the learning rate or check the data."
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            step_total += float(loss.detach())
            step_lm += lm_value if not math.isnan(lm_value) else 0.0
            step_mask += mask_value if not math.isnan(mask_value) else 0.0
            if not math.isnan(probe_value):
                step_probe += probe_value
                probe_micro += 1
            micro += 1
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            state["losses"].append(step_total / micro)
            state["lm"].append(step_lm / micro)
            state["mask"].append(step_mask / micro)
            state["probe"].append(step_probe / probe_micro if probe_micro else float("nan"))
            step_total = step_lm = step_mask = step_probe = 0.0
            micro = probe_micro = 0
            bar.update(1)
            if state["step"] % config.log_every == 0:
                bar.set_postfix(
                    loss=f"{state['losses'][-1]:.4f}",
                    lm=f"{state['lm'][-1]:.3f}",
                    mask=f"{state['mask'][-1]:.3f}",
                    probe=f"{state['probe'][-1]:.3f}",
                    lr=f"{scheduler.get_last_lr()[0]:.2e}",
                )
            out_of_time = (
                config.time_limit_s is not None and time.monotonic() - started > config.time_limit_s
            )
            done = state["step"] >= total_steps or out_of_time
            if done or state["step"] % config.save_every == 0:
                last_checkpoint = _save_checkpoint(
                    accelerator, model, tokenizer, optimizer, scheduler, state, config
                )
            if done:
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            continue
        if out_of_time:
            break
    bar.close()
    model.eval()
    return TrainResult(
        steps=state["step"],
        losses=list(state["losses"]),
        lm_losses=list(state["lm"]),
        mask_losses=list(state["mask"]),
        probe_losses=list(state["probe"]),
        checkpoint=last_checkpoint,
        model=accelerator.unwrap_model(model),
    )


def evaluate_loss(
    model, dataset: Dataset, collator, *, batch_size: int = 1, indices: Sequence[int] | None = None
) -> float:
    """Mean total loss (model's own weighting) over `dataset` (or `indices` of it), no grad."""
    model.eval()
    device = next(model.parameters()).device
    chosen = list(indices) if indices is not None else list(range(len(dataset)))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(chosen), batch_size):
            batch = collator([dataset[i] for i in chosen[start : start + batch_size]])
            model_inputs, _ = split_probe_inputs(_batch_to(batch, device))
            outputs = model(**model_inputs)
            total += float(outputs.loss)
            count += 1
    return total / max(1, count)
