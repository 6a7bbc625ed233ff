"""The probe-attention loss: teach layer 0 to look where the question's details are.

PGDFC ranks thumbnail cells by Ψ, layer 0's attention of the last question token over the
image tokens (`omnipath.pgdfc`). At layer 0 nothing has mixed yet: the query is that one
token's embedding (plus its position), so Ψ is in effect a learned visual saliency, and
only training can point it at lesions. The paper relies on that emerging from ~490k samples
on a 13B model. A 135M model trained for minutes on a CPU does not get there (the first
omnipath-mini put 3.5 % of its tiles on lesions, random tiles 3.8 %), so the trainer can add

    L_probe = −log( Σ_{cells in `attend`} Ψ / Σ_{all thumbnail cells} Ψ )

for records that carry an `attend` map (`omnipath.train.data`), weighted by
`TrainConfig.probe_weight` (0 = the paper's recipe). Ψ here is the same computation as the
engine's probe (`pgdfc.last_token_attention_row`, RoPE, GQA, fp32 softmax, head mean), with
gradients, on the merged input embeddings the decoder receives.

v3 (omnipath-mini v3): that loss is met by putting all of Ψ on ONE lesion cell, and it did:
on the sample slide region 1 scored 0.303 and regions 2 and 3 scored 6e-7 and 1e-7, so
ranks 2..S were ties. It is replaced by a cross-entropy against a target DISTRIBUTION over
the thumbnail cells,

    q_i ∝ coverage_i + FLOOR,        L_probe = −Σ_i q_i · log p_i,    p = Ψ / Σ_cells Ψ,

where coverage_i is the fraction of cell i on a lesion. Its minimum is p = q: every lesion
cell ranked by how much lesion it holds, every other cell kept at a small, non-vanishing
share (the floor, an entropy term in effect), so all S ranks mean something.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from omnipath import pgdfc

PROBE_KEYS = ("probe_positions", "attention_targets")
# Target share of a cell on no lesion, against 1 for a cell wholly on one (see above).
FLOOR = 0.02


def split_probe_inputs(batch: dict) -> tuple[dict, dict]:
    """A collator batch → (model keyword arguments, the probe loss's inputs)."""
    model_inputs = {k: v for k, v in batch.items() if k not in PROBE_KEYS}
    return model_inputs, {k: batch[k] for k in PROBE_KEYS if k in batch}


def omnipath_of(model: nn.Module) -> nn.Module:
    """The OmniPath model inside PEFT / accelerate wrappers."""
    for _ in range(8):  # DDP's .module, PEFT's base model, in any nesting
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and not hasattr(model, "language_model"):
            model = model.module
        else:
            break
    return model


@contextmanager
def captured_decoder_inputs(omnipath_model: nn.Module):
    """Keeps the `inputs_embeds` the LM decoder receives during the next forward (the
    embeddings with image, detail and mask features merged in). Yields a dict that holds
    them under "inputs_embeds" once the forward has run."""
    kept: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if "inputs_embeds" not in kept and kwargs.get("inputs_embeds") is not None:
            kept["inputs_embeds"] = kwargs["inputs_embeds"]

    decoder = omnipath_model.language_model.get_decoder()
    handle = decoder.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        yield kept
    finally:
        handle.remove()


def coverage_cross_entropy(psi_cells: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """−Σ q·log p over N cells: p = Ψ renormalized over the cells, q ∝ coverage + FLOOR.
    psi_cells N (attention weights, ≥ 0); coverage N in [0, 1]."""
    p = psi_cells / psi_cells.sum()
    q = (coverage + FLOOR) / (coverage + FLOOR).sum()
    return -(q * torch.log(p.clamp_min(1e-12))).sum()


def probe_attention_loss(
    omnipath_model: nn.Module,
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    probe_positions: torch.Tensor,
    attention_targets: torch.Tensor,
) -> torch.Tensor | None:
    """Mean L_probe over the rows that have a target and a probe position; None if none do.

    inputs_embeds B×L×D as the decoder got them; input_ids B×L (the first N image-token ids
    of a row are its thumbnail, N = attention_targets.shape[1]); probe_positions B (−1 = no
    probe); attention_targets B×N, each cell's lesion coverage in [0, 1] (all 0 = no target).
    """
    language_model = omnipath_model.language_model
    decoder = language_model.get_decoder()
    layer = decoder.layers[0]
    attn = pgdfc.attention_module(language_model, 0)
    image_token_id = omnipath_model.config.image_token_id
    n_cells = attention_targets.shape[1]
    losses = []
    for row in range(inputs_embeds.shape[0]):
        probe = int(probe_positions[row])
        target = attention_targets[row].to(inputs_embeds.device)
        if probe < 0 or not bool(target.any()) or bool((target >= 1).all()):
            continue  # an all-lesion thumbnail teaches nothing about where to look
        image_positions = (input_ids[row, : probe + 1] == image_token_id).nonzero().flatten()
        if image_positions.numel() < n_cells:
            continue
        hidden = layer.input_layernorm(inputs_embeds[row : row + 1, : probe + 1])
        position_ids = torch.arange(probe + 1, device=hidden.device).unsqueeze(0)
        cos, sin = decoder.rotary_emb(hidden, position_ids)
        psi = pgdfc.last_token_attention_row(attn, hidden, (cos, sin)).mean(dim=1)[0]
        losses.append(coverage_cross_entropy(psi[image_positions[:n_cells]], target))
    return torch.stack(losses).mean() if losses else None
