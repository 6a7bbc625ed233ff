"""PGDFC: prompt-guided detail feature completion (paper arXiv 2412.09521, DESIGN.md).

1. The probe, a pre-pass: Ψ = the first LLM layer's attention of the last input token over
   the thumbnail's image tokens, mean over heads. Layer 0's input is the token embeddings, so
   Ψ comes from the embeddings of [e_v, e_t] with layer 0's input norm, q/k projections and
   RoPE alone (`probe_prepass`: the decoder runs up to layer 0's self-attention and stops),
   before any full forward: about 1/L of a prefill.
2. Tissue filter at grid resolution (cells of the padded square thumbnail that are
   background, padding included, are never chosen).
3. Top-S cells (mode "attention"; equal Ψ, within `PSI_TIE_TOLERANCE`, goes to the cell with
   more tissue, then raster order), S random tissue cells (mode "random", seeded: the paper's
   ablation baseline) or nothing (mode "off").
4. Cells → level-0 rectangles centred on each cell (the cell with `DETAIL_CONTEXT` around it,
   or less: never more than the encoder sees at the detail magnification) → reads through the
   slide layer → the same vision towers (the engine calls
   `model.encode_detail_patches`) → a short position text per patch.
   Cost: the reads run in parallel threads (`read_detail_patches`); the S patches
   go through each tower in one batch, at the base scale only by default
   (`pgdfc_config.detail_scale_factors`: a detail patch already is the fine view that
   multi-scale fusion gives the thumbnail); the engine keeps encoded patches in an LRU
   (`omnipath.engine.details`) for follow-up questions that choose the same cells.
5. A token-budget check that drops patches (lowest score first) or refuses.

`plan_details` does 2.–5. for one question: Ψ → a `DetailPlan` (cells, read rectangles,
reported regions, position texts and detail blocks within the budget).

Frames: `grid_` (row, col) cells of the model's g×g token grid over the square thumbnail;
`l0_` level-0 pixels; `rel_` fractions of the level-0 width/height.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from omnipath.errors import OptionsError, TokenBudgetError, echo
from omnipath.facts import PGDFC_MODES

if TYPE_CHECKING:
    from PIL import Image

    from omnipath.coords import L0Rect, ThumbFrame


# How much context around a grid cell is read, as a fraction of the cell side added on every
# side: 0.25 reads 1.5 × the cell in each direction, centred on the cell, so that a gland or
# a nest of cells cut by the cell border is still seen whole. The models' configs carry their
# own value (pgdfc_config.context_fraction); this is the default. On a slide so large that
# 1.5 cells exceed what the encoder sees at the detail magnification, the read shrinks to that
# window around the cell's centre (see cell_read_rect). The reported region (what the viewer
# draws) is the rectangle read, clipped to the slide.
DETAIL_CONTEXT = 0.25


# --- 1. the probe ---------------------------------------------------------------------------


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def last_token_attention_row(
    attn: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention of the LAST position over all positions, per head, for one layer.

    `attn` is a Llama-family self-attention module (q_proj, k_proj, head_dim, scaling; an
    optional per-head q_norm/k_norm as in Qwen3). `hidden_states` B×L×D is the layer's input
    AFTER its input_layernorm (what the self-attention module receives); `position_embeddings`
    is the (cos, sin) pair B×L×head_dim the decoder passes to the layer. `keys`, when given,
    are the layer's own post-RoPE keys B×H_kv×L×hd (from the KV cache it just filled): then
    only the one query is computed. The row is what the eager kernel computes (RoPE, GQA key
    repeat, scaled dot product, fp32 softmax over all L keys: the last query sees every key
    under the causal mask) for one query. Assumes no earlier cache entries.
    Returns B×H×L float32.
    """
    head_dim = int(attn.head_dim)
    b, length, _ = hidden_states.shape
    q = attn.q_proj(hidden_states[:, -1:, :]).view(b, 1, -1, head_dim)
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
    q = q.transpose(1, 2)  # B×H×1×hd
    cos, sin = position_embeddings
    cos = cos.unsqueeze(1)  # B×1×L×hd
    sin = sin.unsqueeze(1)
    q = q * cos[:, :, -1:] + _rotate_half(q) * sin[:, :, -1:]
    if keys is None:
        k = attn.k_proj(hidden_states).view(b, length, -1, head_dim)
        if hasattr(attn, "k_norm"):
            k = attn.k_norm(k)
        k = k.transpose(1, 2)  # B×Hkv×L×hd
        keys = k * cos + _rotate_half(k) * sin
    n_rep = q.shape[1] // keys.shape[1]
    if n_rep > 1:  # grouped-query attention: each key head serves n_rep query heads
        keys = keys.repeat_interleave(n_rep, dim=1)
    scores = torch.matmul(q.float(), keys.float().transpose(-1, -2)) * float(attn.scaling)
    return scores.softmax(dim=-1)[:, :, 0, :]  # B×H×L


def attention_module(language_model: nn.Module, layer: int = 0) -> nn.Module:
    """Layer `layer`'s self-attention of a transformers causal LM (Llama, Mistral, Qwen, ...)."""
    decoder = language_model.get_decoder() if hasattr(language_model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is not None and len(layers) > layer and hasattr(layers[layer], "self_attn"):
        return layers[layer].self_attn
    if layer != 0:
        raise TypeError(f"{type(language_model).__name__} has no decoder layer {layer} to probe")
    for module in language_model.modules():  # fallback: the first q/k projection pair
        if hasattr(module, "q_proj") and hasattr(module, "k_proj") and hasattr(module, "head_dim"):
            return module
    raise TypeError(f"{type(language_model).__name__} has no Llama-style self-attention to probe")


class _Captured(Exception):
    """Ends the pre-pass once the probed layer's attention input is known."""


def probe_prepass(
    language_model: nn.Module, inputs_embeds: torch.Tensor, layer: int = 0
) -> torch.Tensor:
    """Ψ's row before any full forward: B×H×L float32, the last position's attention over all
    L positions of `inputs_embeds` ([e_v, e_t], B×L×D) in layer `layer`, per head.

    The decoder runs up to layer `layer`'s self-attention (for layer 0: the rotary
    embedding and layer 0's input norm only), a pre-hook computes the row there from the
    module's own q/k projections and RoPE (`last_token_attention_row`) and the forward stops:
    no KV cache is written, no later layer runs, and the model's attention kernel is never
    touched. The hook is removed on return."""
    attn = attention_module(language_model, layer)
    found: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        position_embeddings = kwargs.get("position_embeddings")
        if hidden is None or position_embeddings is None:
            raise RuntimeError("the probed attention was called without hidden states or RoPE")
        found.append(last_token_attention_row(module, hidden, position_embeddings))
        raise _Captured

    handle = attn.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            language_model.get_decoder()(inputs_embeds=inputs_embeds, use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not found:
        raise RuntimeError(f"layer {layer}'s attention did not run in the probe's pre-pass")
    return found[0]


def psi_grid(
    row: torch.Tensor, image_positions: torch.Tensor | Sequence[int], grid: int
) -> np.ndarray:
    """Ψ on the token grid: `row` (L,) or 1×L, the thumbnail's N = grid² image-token positions
    in raster order → float32 grid×grid (grid_row, grid_col)."""
    flat = row.reshape(-1).float().cpu()
    positions = torch.as_tensor(image_positions, dtype=torch.long).cpu()
    if positions.numel() != grid * grid:
        raise ValueError(f"{positions.numel()} image positions for a {grid}×{grid} grid")
    return flat[positions].reshape(grid, grid).numpy().astype(np.float32)


# --- 2./3. cell selection ----------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """A grid cell chosen for a detail read. `score` = Ψ there (NaN when no probe ran)."""

    grid_row: int
    grid_col: int
    score: float
    rank: int


def validate_mode(mode: str) -> None:
    if mode not in PGDFC_MODES:
        raise OptionsError(
            f"PGDFC mode {echo(mode)} is not known; use one of: {', '.join(PGDFC_MODES)}."
        )


def validate_s(s: object, *, mode: str) -> None:
    """S checks that need no slide (the engine checks S against the tissue cells later)."""
    if isinstance(s, bool) or not isinstance(s, int):
        raise OptionsError(
            f"S (the number of detail patches) must be a whole number, not {echo(s)}."
        )
    if mode != "off" and s < 1:
        raise OptionsError(
            f"S = {s}: PGDFC needs at least one detail patch; "
            "use pgdfc_mode='off' to answer from the thumbnail alone."
        )


def tissue_cells(tissue_fraction_grid: np.ndarray, threshold: float) -> np.ndarray:
    """grid×grid bool: cells whose tissue fraction reaches `threshold` (background and the
    thumbnail's white padding fall below it)."""
    return np.asarray(tissue_fraction_grid, dtype=np.float32) >= float(threshold)


def check_s_against_tissue(s: int, tissue: np.ndarray) -> None:
    """OptionsError when S exceeds the number of tissue cells (tissue: grid×grid bool)."""
    tissue = np.asarray(tissue, dtype=bool)
    n_tissue = int(tissue.sum())
    if s > n_tissue:
        raise OptionsError(
            f"S = {s} detail patches were asked for, but only {n_tissue} of the "
            f"{tissue.shape[0]}×{tissue.shape[1]} thumbnail cells hold tissue; "
            f"choose S ≤ {n_tissue}" + (" or pgdfc_mode='off'." if n_tissue == 0 else ".")
        )


# Ψ values closer than this fraction of the largest Ψ over the tissue cells count as equal:
# 1e-6 is float32 noise (a few ulps of the max, ~1.2e-7 each) in the head mean of a softmax
# computed in float32; a larger tolerance would overrule differences the probe did make.
# Ψ is measured down from its max in steps of this width: values in one step tie. So the
# values within the width below the max tie with it, exactly equal values (e.g. attention
# that underflowed to 0 outside one cell) always tie, and two other values closer than the
# width tie unless a step edge falls between them.
PSI_TIE_TOLERANCE = 1e-6


def attention_order(
    psi: np.ndarray, tissue_fraction: np.ndarray | None = None, *, tol: float = PSI_TIE_TOLERANCE
) -> np.ndarray:
    """Positions 0..n-1 of `psi` (n cells, raster order), best first: highest Ψ (in steps of
    `tol` × max |Ψ| down from the max, see `PSI_TIE_TOLERANCE`), then the higher tissue
    fraction (when given), then raster order. Ties must not be decided by the index alone:
    with a collapsed Ψ the cells would line up along the top row of the tissue."""
    psi = np.asarray(psi, dtype=np.float64).reshape(-1)
    if psi.size == 0:
        return np.zeros(0, dtype=np.int64)
    scale = float(np.max(np.abs(psi))) * tol
    steps = np.floor((psi.max() - psi) / scale) if scale > 0 else np.zeros_like(psi)
    fraction = (
        np.zeros_like(psi)
        if tissue_fraction is None
        else np.asarray(tissue_fraction, dtype=np.float64).reshape(-1)
    )
    # np.lexsort: the last key is the primary one
    return np.lexsort((np.arange(psi.size), -fraction, steps))


def select_cells(
    *,
    mode: str,
    s: int,
    tissue: np.ndarray,
    psi: np.ndarray | None = None,
    seed: int = 0,
    tissue_fraction: np.ndarray | None = None,
) -> list[Cell]:
    """Choose the cells to read at high resolution.

    tissue: grid×grid bool (`tissue_cells`); psi: grid×grid Ψ (required for "attention");
    tissue_fraction: grid×grid fraction of tissue per cell (the tie-break; optional).
    "attention": the S tissue cells with the highest Ψ (`attention_order`: Ψ equal within
    `PSI_TIE_TOLERANCE` goes to the higher tissue fraction, then to raster order).
    "random": S tissue cells drawn uniformly without replacement by numpy's PCG64 from
    `seed` (same seed, same cells). "off": none. Background cells are never returned.
    S must not exceed the tissue cells: the caller checked it (`check_s_against_tissue`)
    when the question was asked.
    """
    validate_mode(mode)
    validate_s(s, mode=mode)
    if mode == "off":
        return []
    tissue = np.asarray(tissue, dtype=bool)
    flat_tissue = np.flatnonzero(tissue.reshape(-1))
    grid_cols = tissue.shape[1]
    flat_psi = None if psi is None else np.asarray(psi, dtype=np.float64).reshape(-1)
    if mode == "attention":
        if flat_psi is None:
            raise ValueError("mode 'attention' needs Ψ")
        fraction = None
        if tissue_fraction is not None:
            fraction = np.asarray(tissue_fraction, dtype=np.float64)
            if fraction.shape != tissue.shape:
                raise ValueError(
                    f"tissue fraction grid {fraction.shape} for a tissue grid {tissue.shape}"
                )
            fraction = fraction.reshape(-1)[flat_tissue]
        order = attention_order(flat_psi[flat_tissue], fraction)
        chosen = flat_tissue[order[:s]]
    else:
        rng = np.random.default_rng(seed)
        chosen = rng.choice(flat_tissue, size=s, replace=False)
    return [
        Cell(
            grid_row=int(index // grid_cols),
            grid_col=int(index % grid_cols),
            score=float("nan") if flat_psi is None else float(flat_psi[index]),
            rank=rank,
        )
        for rank, index in enumerate(chosen, start=1)
    ]


# --- 4. cells → level-0 reads -------------------------------------------------------------------


def cell_read_rect(
    frame: ThumbFrame,
    cell: Cell,
    grid: int,
    context: float = DETAIL_CONTEXT,
    *,
    max_l0_side: float | None = None,
) -> L0Rect:
    """The SQUARE level-0 rectangle read for a cell, centred on the cell.

    Its side is the cell plus `context` × the cell side on every side, or `max_l0_side` when
    that is smaller (`detail_window_l0`: what the encoder sees at the detail magnification;
    on a large slide a cell is bigger than that and the read is the cell's centre at full
    detail, not the whole cell downsampled). Not clipped (the slide layer returns white
    outside the slide), so every detail patch has one scale and aspect.
    """
    from omnipath.coords import L0Rect

    l0_cx, l0_cy = frame.grid_cell_centre_l0(cell.grid_row, cell.grid_col, grid)
    l0_side = frame.grid_cell_l0_side(grid) * (1.0 + 2.0 * context)
    if max_l0_side is not None:
        l0_side = min(l0_side, max_l0_side)
    side = max(1, round(l0_side))
    return L0Rect(x=round(l0_cx - side / 2), y=round(l0_cy - side / 2), w=side, h=side)


def cell_region(read_rect: L0Rect, l0_width: int, l0_height: int) -> L0Rect | None:
    """The region reported to the user: the read rectangle clipped to the slide (None when
    nothing of it is on the slide; the tissue filter already excludes such cells)."""
    clipped = read_rect.clip(l0_width, l0_height)
    return clipped if clipped.w > 0 and clipped.h > 0 else None


def slide_mpp(slide: Any) -> float | None:
    """µm per level-0 pixel, from the slide's metadata or its objective power (10 / ×)."""
    info = getattr(slide, "info", None)
    mpp = getattr(info, "mpp_x", None)
    if mpp:
        return float(mpp)
    power = getattr(info, "objective_power", None)
    return 10.0 / float(power) if power else None


def detail_window_l0(
    *, encoder_side: int, slide_mpp: float | None, detail_mpp: float | None
) -> float | None:
    """Level-0 side of what the encoder's input covers at the detail magnification
    (`encoder_side` px at `detail_mpp` µm/px); None when the slide's resolution is unknown."""
    if not slide_mpp or not detail_mpp:
        return None
    return encoder_side * detail_mpp / slide_mpp


def detail_read_side(
    l0_side: int, *, slide_mpp: float | None, detail_mpp: float | None, encoder_side: int
) -> int:
    """Pixel side at which a square level-0 read of `l0_side` pixels is requested.

    At the detail magnification (`detail_mpp` µm/px, e.g. 0.5 for 20×) when the slide's
    resolution is known, never more than the vision encoder consumes (`encoder_side`; a
    larger read would only be downsampled again) and never upsampled past level 0.
    """
    side = encoder_side
    if slide_mpp and detail_mpp:
        side = min(side, round(l0_side * slide_mpp / detail_mpp))
    return int(max(16, min(side, l0_side)))


# Detail reads run in parallel: the slide layer is thread-safe for reads and OpenSlide's
# decoding releases the GIL, so S reads cost about S / cores reads.
MAX_READ_THREADS = 8


def read_detail_patches(slide: Any, rects: Sequence[L0Rect], out_side: int) -> torch.Tensor:
    """High-resolution reads through the slide layer, in parallel threads (I/O and JPEG
    decoding in OpenSlide release the GIL) → S×3×out_side×out_side float in [0, 1], in the
    order of `rects`; a read's exception is raised here."""
    from concurrent.futures import ThreadPoolExecutor

    if not rects:
        return torch.zeros(0, 3, out_side, out_side)
    size = (int(out_side), int(out_side))
    with ThreadPoolExecutor(max_workers=min(MAX_READ_THREADS, len(rects))) as pool:
        images = list(pool.map(lambda rect: slide.read_l0_region(rect, size), rects))
    return images_to_tensor(images)


def images_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL RGB images of one size → B×3×H×W float32 in [0, 1]."""
    return rgb_arrays_to_tensor(
        np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    )


def rgb_arrays_to_tensor(arrays: np.ndarray) -> torch.Tensor:
    """B×H×W×3 uint8 → B×3×H×W float32 in [0, 1]."""
    stacked = torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2).contiguous()
    return stacked.float().div_(255.0)


def position_text(index: int, l0_rect: L0Rect, l0_width: int, l0_height: int) -> str:
    """The short text that precedes detail patch `index` (1-based): where it lies on the slide,
    in relative coordinates (the frame the model writes boxes in), clipped to 0–1."""

    def frac(value: float, total: int) -> float:
        return min(1.0, max(0.0, value / total))

    x0, x1 = frac(l0_rect.x, l0_width), frac(l0_rect.x + l0_rect.w, l0_width)
    y0, y1 = frac(l0_rect.y, l0_height), frac(l0_rect.y + l0_rect.h, l0_height)
    return f"Detail {index} at x {x0:.2f}-{x1:.2f}, y {y0:.2f}-{y1:.2f}:"


# --- 5. token budget ----------------------------------------------------------------------------


def fit_detail_budget(
    *,
    base_tokens: int,
    patch_tokens: Sequence[int],
    max_new_tokens: int,
    context_length: int | None,
) -> int:
    """How many detail patches fit the context (patches come sorted by score, best first, so
    keeping a prefix drops the lowest-scoring ones).

    base_tokens: the prompt without detail blocks (thumbnail tokens, history, question,
    assistant prompt); patch_tokens[i]: patch i's image tokens plus its position text.
    Raises TokenBudgetError when even the base prompt plus `max_new_tokens` does not fit.
    """
    if context_length is None:
        return len(patch_tokens)
    if base_tokens + max_new_tokens > context_length:
        raise TokenBudgetError(
            f"The conversation, the thumbnail and the question take {base_tokens} tokens; "
            f"with up to {max_new_tokens} new tokens that exceeds the model's context of "
            f"{context_length}. Start a new conversation, shorten the question or lower "
            "max_new_tokens."
        )
    used = base_tokens + max_new_tokens
    kept = 0
    for tokens in patch_tokens:
        if used + tokens > context_length:
            break
        used += tokens
        kept += 1
    return kept


# --- 2.–5. together: the plan for one question -------------------------------------------------


@dataclass(frozen=True)
class DetailPlan:
    """What PGDFC reads for one question, best cell first, within the token budget.

    cells: the chosen cells kept; read_rects: their square level-0 reads; l0_rects: the reads
    clipped to the slide (what the user is shown); block_ids: per patch, its position text's
    tokens then its P image tokens; dropped: patches the budget left out; out_side: the read
    side in pixels (0 when nothing is read)."""

    cells: list[Cell]
    read_rects: list[L0Rect]
    l0_rects: list[L0Rect]
    block_ids: list[list[int]]
    dropped: int
    out_side: int


def plan_details(
    *,
    psi: np.ndarray | None,
    tissue: np.ndarray,
    frame: ThumbFrame,
    mode: str,
    s: int,
    seed: int,
    context: float,
    slide_mpp: float | None,
    detail_mpp: float,
    encoder_side: int,
    block_ids: Callable[[list[str]], list[list[int]]],
    base_tokens: int,
    max_new_tokens: int,
    context_length: int | None,
    tissue_fraction: np.ndarray | None = None,
) -> DetailPlan:
    """Ψ (grid×grid) → cells → square level-0 reads at the detail magnification → position
    texts → detail blocks (`block_ids(texts)`: the prompt's tokenization) → the budget.
    tissue_fraction: grid×grid fraction of tissue per cell, the tie-break of equal Ψ."""
    grid = int(tissue.shape[0])
    cells = select_cells(
        mode=mode, s=s, tissue=tissue, psi=psi, seed=seed, tissue_fraction=tissue_fraction
    )
    window = detail_window_l0(encoder_side=encoder_side, slide_mpp=slide_mpp, detail_mpp=detail_mpp)
    kept_cells, read_rects, l0_rects = [], [], []
    for cell in cells:
        read_rect = cell_read_rect(frame, cell, grid, context, max_l0_side=window)
        l0_rect = cell_region(read_rect, frame.l0_width, frame.l0_height)
        if l0_rect is not None:  # always, for a tissue cell; never read pure padding
            kept_cells.append(cell)
            read_rects.append(read_rect)
            l0_rects.append(l0_rect)
    texts = [
        position_text(i, rect, frame.l0_width, frame.l0_height)
        for i, rect in enumerate(l0_rects, start=1)
    ]
    blocks = block_ids(texts)
    keep = fit_detail_budget(
        base_tokens=base_tokens,
        patch_tokens=[len(b) for b in blocks],
        max_new_tokens=max_new_tokens,
        context_length=context_length,
    )
    out_side = 0
    if keep:
        out_side = detail_read_side(
            read_rects[0].w, slide_mpp=slide_mpp, detail_mpp=detail_mpp, encoder_side=encoder_side
        )
    return DetailPlan(
        cells=kept_cells[:keep],
        read_rects=read_rects[:keep],
        l0_rects=l0_rects[:keep],
        block_ids=blocks[:keep],
        dropped=len(texts) - keep,
        out_side=out_side,
    )
