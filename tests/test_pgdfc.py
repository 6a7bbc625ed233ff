"""PGDFC: the probe equals eager attention, cell selection, reads, budget, options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from omnipath.coords import L0Rect, ThumbFrame
from omnipath.errors import OptionsError, TokenBudgetError
from omnipath.pgdfc import (
    DETAIL_CONTEXT,
    PSI_TIE_TOLERANCE,
    Cell,
    attention_order,
    cell_read_rect,
    cell_region,
    check_s_against_tissue,
    detail_read_side,
    detail_window_l0,
    fit_detail_budget,
    plan_details,
    position_text,
    probe_prepass,
    psi_grid,
    select_cells,
    tissue_cells,
)


def _llama(attn: str, *, kv_heads: int = 2, rope_theta: float = 10000.0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_probe_matches_eager_output_attentions(kv_heads: int) -> None:
    torch.manual_seed(0)
    fast = _llama("sdpa", kv_heads=kv_heads)
    eager = _llama("eager", kv_heads=kv_heads)
    eager.load_state_dict(fast.state_dict())
    embeds = torch.randn(1, 40, 64)
    with torch.no_grad():
        heads = probe_prepass(fast, embeds)
        reference = eager(inputs_embeds=embeds, output_attentions=True)
    assert fast.config._attn_implementation == "sdpa"  # the model itself never went eager
    expected = reference.attentions[0][:, :, -1, :]  # B×H×L, layer 0, last query
    assert heads.shape == expected.shape
    assert torch.allclose(heads, expected, atol=1e-5)
    assert torch.allclose(heads.mean(dim=1), expected.mean(dim=1), atol=1e-5)


def test_probe_pre_pass_runs_no_layer_after_layer_0_attention_and_unhooks() -> None:
    torch.manual_seed(1)
    model = _llama("sdpa")
    ran: list[str] = []
    layers = model.model.layers
    hooks = [
        layers[0].mlp.register_forward_pre_hook(lambda m, a: ran.append("layer 0 mlp")),
        layers[1].register_forward_pre_hook(lambda m, a: ran.append("layer 1")),
    ]
    heads = probe_prepass(model, torch.randn(1, 12, 64))
    for hook in hooks:
        hook.remove()
    assert ran == [] and heads.shape == (1, 4, 12)
    layer0 = layers[0].self_attn
    assert not layer0._forward_pre_hooks and not layer0._forward_hooks


def _planted_llama(signal_dim: int) -> LlamaForCausalLM:
    """One head whose q·k only reads input dimension `signal_dim`, written into the lowest-
    frequency RoPE pair (rotation ≈ 0 over a few hundred positions): Ψ peaks exactly on the
    positions whose embedding carries that dimension."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 1e9},
    )
    model = LlamaForCausalLM(config).eval()
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        attn.q_proj.weight.zero_()
        attn.k_proj.weight.zero_()
        attn.q_proj.weight[15, signal_dim] = 1.0  # pair (15, 31) is the slowest RoPE pair
        attn.k_proj.weight[15, signal_dim] = 1.0
    return model


def test_planted_cells_are_found_and_background_never_chosen() -> None:
    grid, signal_dim = 6, 0
    model = _planted_llama(signal_dim)
    n_image, n_text = grid * grid, 5
    embeds = torch.randn(1, n_image + n_text, 32) * 0.1
    embeds[..., signal_dim] = 0.0
    planted_tissue = [(1, 1), (2, 4), (4, 2)]
    planted_background = [(0, 5), (5, 0)]  # even stronger peaks, but on background
    for r, c in planted_tissue:
        embeds[0, r * grid + c, signal_dim] = 1.0
    for r, c in planted_background:
        embeds[0, r * grid + c, signal_dim] = 2.0
    embeds[0, -1, signal_dim] = 3.0  # the last (question) token looks for the signal
    row = probe_prepass(model, embeds).mean(dim=1)
    psi = psi_grid(row, list(range(n_image)), grid)
    tissue = np.ones((grid, grid), dtype=bool)
    for r, c in planted_background:
        tissue[r, c] = False
    tissue[0, :] = False  # a padding row
    cells = select_cells(mode="attention", s=3, tissue=tissue, psi=psi)
    assert {(c.grid_row, c.grid_col) for c in cells} == set(planted_tissue)
    assert [c.rank for c in cells] == [1, 2, 3]
    assert all(a.score >= b.score for a, b in zip(cells, cells[1:], strict=False))
    many = select_cells(mode="attention", s=int(tissue.sum()), tissue=tissue, psi=psi)
    assert all(tissue[c.grid_row, c.grid_col] for c in many)


def test_random_mode_is_seeded_over_tissue_and_differs_from_attention() -> None:
    rng = np.random.default_rng(5)
    psi = rng.random((8, 8)).astype(np.float32)
    tissue = np.zeros((8, 8), dtype=bool)
    tissue[2:7, 1:7] = True
    top = select_cells(mode="attention", s=6, tissue=tissue, psi=psi)
    a = select_cells(mode="random", s=6, tissue=tissue, psi=psi, seed=3)
    b = select_cells(mode="random", s=6, tissue=tissue, psi=psi, seed=3)
    c = select_cells(mode="random", s=6, tissue=tissue, psi=psi, seed=4)
    cells = lambda xs: [(x.grid_row, x.grid_col) for x in xs]  # noqa: E731
    assert cells(a) == cells(b)
    assert cells(a) != cells(c)
    assert set(cells(a)) != set(cells(top))
    assert all(tissue[r, col] for r, col in cells(a) + cells(c))
    assert len(set(cells(a))) == 6
    # the probe score is still reported for random picks
    assert a[0].score == pytest.approx(float(psi[a[0].grid_row, a[0].grid_col]))
    assert math.isnan(select_cells(mode="random", s=1, tissue=tissue, seed=0)[0].score)


def test_off_mode_selects_nothing() -> None:
    assert select_cells(mode="off", s=0, tissue=np.ones((3, 3), bool)) == []


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"mode": "attention", "s": 0}, "at least one detail patch"),
        ({"mode": "random", "s": -2}, "at least one detail patch"),
        ({"mode": "attention", "s": 2.5}, "whole number"),
        ({"mode": "zoom", "s": 2}, "not known"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs: dict, phrase: str) -> None:
    tissue = np.zeros((4, 4), dtype=bool)
    tissue[1:3, 0:3] = True
    with pytest.raises(OptionsError, match=phrase):
        select_cells(tissue=tissue, psi=np.zeros((4, 4)), **kwargs)


def test_s_above_the_tissue_cells_is_refused() -> None:
    tissue = np.zeros((4, 4), dtype=bool)
    tissue[1:3, 0:3] = True
    check_s_against_tissue(6, tissue)
    with pytest.raises(OptionsError, match="only 6 of the 4×4 thumbnail cells hold tissue"):
        check_s_against_tissue(7, tissue)


def test_tissue_threshold() -> None:
    fractions = np.array([[0.0, 0.04], [0.05, 0.9]], dtype=np.float32)
    assert tissue_cells(fractions, 0.05).tolist() == [[False, False], [True, True]]


def test_read_rects_are_square_centred_with_context_and_regions_clipped() -> None:
    frame = ThumbFrame(l0_width=6000, l0_height=3000, side=60)  # scale 0.01, pad_y 15
    grid = 6  # 10 thumb px = 1000 l0 px per cell
    corner = Cell(grid_row=1, grid_col=0, score=1.0, rank=1)  # thumb y 10..20: half padding
    read = cell_read_rect(frame, corner, grid)
    assert read.w == read.h == round(1000 * (1 + 2 * DETAIL_CONTEXT))
    assert (read.x, read.y) == (-250, -750)  # centred on the cell (500, 0)
    assert cell_region(read, 6000, 3000) == L0Rect(0, 0, 1250, 750)
    far = cell_read_rect(frame, Cell(0, 0, 1.0, 1), grid)  # all padding
    assert cell_region(far, 6000, 3000) is None


def test_read_window_at_the_detail_magnification_on_a_large_slide() -> None:
    # 60k × 40k at 0.25 µm/px, encoder 448 px: at 20× (0.5 µm/px) it sees 896 level-0 px,
    # much less than a 3750 px cell, so the read is the cell's centre at full detail
    frame = ThumbFrame(l0_width=60000, l0_height=40000, side=448)
    window = detail_window_l0(encoder_side=448, slide_mpp=0.25, detail_mpp=0.5)
    assert window == 896
    cell = Cell(grid_row=8, grid_col=3, score=1.0, rank=1)
    read = cell_read_rect(frame, cell, 16, max_l0_side=window)
    assert read.w == read.h == 896
    centre = frame.thumb_to_l0(3.5 * 28, 8.5 * 28)
    assert abs(read.x + 448 - centre[0]) <= 1 and abs(read.y + 448 - centre[1]) <= 1
    assert detail_read_side(read.w, slide_mpp=0.25, detail_mpp=0.5, encoder_side=448) == 448
    assert detail_window_l0(encoder_side=448, slide_mpp=None, detail_mpp=0.5) is None


def test_detail_read_side() -> None:
    # 2000 l0 px at 0.25 µm/px read at 20× (0.5 µm/px) → 1000 px, capped by the encoder
    assert detail_read_side(2000, slide_mpp=0.25, detail_mpp=0.5, encoder_side=384) == 384
    assert detail_read_side(400, slide_mpp=0.25, detail_mpp=0.5, encoder_side=384) == 200
    assert detail_read_side(100, slide_mpp=None, detail_mpp=0.5, encoder_side=384) == 100
    assert detail_read_side(5000, slide_mpp=None, detail_mpp=None, encoder_side=224) == 224


def test_position_text() -> None:
    text = position_text(1, L0Rect(24600, 8800, 3600, 2400), 60000, 40000)
    assert text == "Detail 1 at x 0.41-0.47, y 0.22-0.28:"
    assert "x 0.00-" in position_text(2, L0Rect(-100, 0, 200, 200), 1000, 1000)


def test_budget_drops_lowest_patches_then_refuses() -> None:
    assert (
        fit_detail_budget(
            base_tokens=100, patch_tokens=[10] * 8, max_new_tokens=20, context_length=None
        )
        == 8
    )
    assert (
        fit_detail_budget(
            base_tokens=100, patch_tokens=[10] * 8, max_new_tokens=20, context_length=200
        )
        == 8
    )
    assert (
        fit_detail_budget(
            base_tokens=100, patch_tokens=[10] * 8, max_new_tokens=20, context_length=155
        )
        == 3
    )
    with pytest.raises(TokenBudgetError, match="exceeds the model's context of 110"):
        fit_detail_budget(base_tokens=100, patch_tokens=[10], max_new_tokens=20, context_length=110)


def test_probe_matches_eager_on_tiny_omnipath() -> None:
    """The probe inside the engine's setting: tiny OmniPath's LM over [thumbnail tokens, text]."""
    from omnipath.model import OmniPathForConditionalGeneration, tiny_config

    torch.manual_seed(0)
    model = OmniPathForConditionalGeneration(tiny_config()).eval()
    lm = model.language_model
    eager = type(lm)(lm.config.__class__(**{**lm.config.to_dict(), "attn_implementation": "eager"}))
    eager.load_state_dict(lm.state_dict())
    eager.eval()
    n = model.num_image_tokens
    ids = torch.tensor([[1] + [model.config.image_token_id] * n + list(range(10, 30))])
    with torch.no_grad():
        tokens, _ = model.encode_images(torch.rand(1, 3, model.thumb_side, model.thumb_side))
        embeds = model.merge_embeddings(ids, model.embed_tokens(ids), tokens)
        row = probe_prepass(lm, embeds).mean(dim=1)
        reference = eager(inputs_embeds=embeds, output_attentions=True).attentions[0]
    assert eager.config._attn_implementation == "eager"
    assert lm.config._attn_implementation != "eager"
    expected = reference[0, :, -1, :].mean(dim=0)
    assert torch.allclose(row[0], expected, atol=1e-5)
    psi = psi_grid(row, list(range(1, n + 1)), model.grid)
    assert psi.shape == (model.grid, model.grid)
    assert np.allclose(psi.reshape(-1), expected[1 : n + 1].numpy(), atol=1e-5)


class _ColourSlide:
    """Answers each read with a solid image whose red channel is the rectangle's x."""

    def read_l0_region(self, rect: L0Rect, out_size: tuple[int, int]):
        from PIL import Image

        if rect.x < 0:
            raise ValueError("outside")
        return Image.new("RGB", out_size, (rect.x, 0, 0))


def test_parallel_detail_reads_keep_order_and_raise() -> None:
    from omnipath.pgdfc import read_detail_patches

    rects = [L0Rect(x, 0, 8, 8) for x in (30, 10, 200, 0, 90)]
    patches = read_detail_patches(_ColourSlide(), rects, 4)
    assert patches.shape == (5, 3, 4, 4)
    assert [round(float(v) * 255) for v in patches[:, 0, 0, 0]] == [30, 10, 200, 0, 90]
    assert read_detail_patches(_ColourSlide(), [], 4).shape == (0, 3, 4, 4)
    with pytest.raises(ValueError, match="outside"):
        read_detail_patches(_ColourSlide(), [L0Rect(5, 0, 8, 8), L0Rect(-1, 0, 8, 8)], 4)


# --- ties: Ψ equal within PSI_TIE_TOLERANCE → more tissue first, then raster order ------------


def _cells(cells: list[Cell]) -> list[tuple[int, int]]:
    return [(c.grid_row, c.grid_col) for c in cells]


def test_collapsed_psi_ties_go_to_the_cells_with_more_tissue_not_the_top_row() -> None:
    # Ψ collapsed onto one cell (the sample slide: 0.303, then ~0 everywhere else)
    psi = np.zeros((4, 4), dtype=np.float32)
    psi[3, 1] = 0.303
    fraction = np.array(
        [
            [0.3, 0.4, 0.4, 0.3],  # the ragged top edge of the tissue
            [0.9, 1.0, 1.0, 0.6],
            [1.0, 1.0, 0.8, 0.0],
            [0.7, 1.0, 0.5, 0.0],
        ],
        dtype=np.float32,
    )
    tissue = tissue_cells(fraction, 0.2)
    cells = select_cells(mode="attention", s=6, tissue=tissue, psi=psi, tissue_fraction=fraction)
    assert _cells(cells) == [(3, 1), (1, 1), (1, 2), (2, 0), (2, 1), (1, 0)]
    assert [c.rank for c in cells] == [1, 2, 3, 4, 5, 6]
    # without fractions (the old behaviour) the ties fall in raster order: the top row
    plain = select_cells(mode="attention", s=6, tissue=tissue, psi=psi)
    assert _cells(plain) == [(3, 1), (0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]


def test_psi_within_float32_noise_ties_and_a_real_difference_does_not() -> None:
    fraction = np.array([[0.5, 1.0, 0.9]], dtype=np.float32)
    tissue = np.ones((1, 3), dtype=bool)
    top = 0.25
    # cell 0 above cell 2 by 1e-8 of the max (float32 noise): a tie, so the tissue decides
    noise = np.array([[top * (1 + 1e-8), top, top * (1 - 1e-8)]], dtype=np.float64)
    cells = select_cells(mode="attention", s=3, tissue=tissue, psi=noise, tissue_fraction=fraction)
    assert _cells(cells) == [(0, 1), (0, 2), (0, 0)]
    # 1e-3 of the max is a real difference: Ψ decides, whatever the tissue
    real = np.array([[top, top * (1 - 1e-3), top * (1 - 2e-3)]])
    cells = select_cells(mode="attention", s=3, tissue=tissue, psi=real, tissue_fraction=fraction)
    assert _cells(cells) == [(0, 0), (0, 1), (0, 2)]
    assert PSI_TIE_TOLERANCE == 1e-6


def test_attention_order_keys_and_edge_cases() -> None:
    # equal Ψ and equal tissue: raster order; all-zero Ψ: the tissue alone
    assert attention_order(np.zeros(4), np.array([0.5, 0.5, 1.0, 0.5])).tolist() == [2, 0, 1, 3]
    assert attention_order(np.zeros(3)).tolist() == [0, 1, 2]
    assert attention_order(np.array([0.1, 0.3, 0.2])).tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="tissue fraction grid"):
        select_cells(
            mode="attention",
            s=1,
            tissue=np.ones((2, 2), bool),
            psi=np.zeros((2, 2)),
            tissue_fraction=np.ones((3, 3)),
        )


def test_plan_details_breaks_ties_by_the_tissue_fraction() -> None:
    frame = ThumbFrame(l0_width=4000, l0_height=4000, side=40)  # square: no padding
    fraction = np.full((4, 4), 1.0, dtype=np.float32)
    fraction[0, :] = 0.5
    fraction[1, :2] = 0.7

    def plan(tissue_fraction):
        return plan_details(
            psi=np.zeros((4, 4), dtype=np.float32),
            tissue=tissue_cells(fraction, 0.2),
            tissue_fraction=tissue_fraction,
            frame=frame,
            mode="attention",
            s=3,
            seed=0,
            context=DETAIL_CONTEXT,
            slide_mpp=None,
            detail_mpp=0.5,
            encoder_side=64,
            block_ids=lambda texts: [[0]] * len(texts),
            base_tokens=10,
            max_new_tokens=5,
            context_length=None,
        )

    assert _cells(plan(fraction).cells) == [(1, 2), (1, 3), (2, 0)]
    assert _cells(plan(None).cells) == [(0, 0), (0, 1), (0, 2)]


def test_engine_passes_the_tissue_fraction_so_collapsed_psi_skips_the_ragged_top(
    tmp_path, monkeypatch
) -> None:
    """Ψ forced to zero everywhere: the engine's regions are the cells full of tissue, not the
    first row of cells that hold some."""
    from PIL import Image, ImageDraw

    from omnipath.engine import AnswerOptions, Engine
    from omnipath.slide import open_slide
    from tests.engine_models import tiny_model

    model, tokenizer = tiny_model()
    engine = Engine(model, tokenizer, model_id="tiny", revision=None, demo=True)
    side = 1200
    image = Image.new("RGB", (side, side), (255, 255, 255))
    # tissue everywhere but a white band over the top half of the first cell row
    ImageDraw.Draw(image).rectangle((0, side // (2 * model.grid), side, side), fill=(200, 90, 160))
    image.save(tmp_path / "ragged.png")
    grid = model.grid
    monkeypatch.setattr(engine, "_probe", lambda *a, **k: np.zeros((grid, grid), np.float32))
    plans = []
    original = engine._plan

    def recorded_plan(*args, **kwargs):
        plans.append(original(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(engine, "_plan", recorded_plan)
    with open_slide(tmp_path / "ragged.png") as slide:
        options = AnswerOptions(pgdfc_mode="attention", s=grid, max_new_tokens=2)
        answer = list(engine.answer(slide, [], "Where is the tumor?", options))[-1]
        fraction = engine._look(slide, slide).tissue
    assert len(answer.regions) == grid
    chosen = [fraction[c.grid_row, c.grid_col] for c in plans[0].cells]
    assert all(c.grid_row > 0 for c in plans[0].cells)
    assert chosen == sorted(fraction.reshape(-1).tolist(), reverse=True)[:grid]
