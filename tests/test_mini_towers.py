"""Stage 0 of omnipath-mini: labelled patches from the texture generator, tower pretraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnipath.mini.towers import CELL_TARGETS, ThumbTargets, pretrain_towers
from omnipath.synth.patches import KINDS, PATCH_CLASSES, render_patch_batch


def test_patches_are_detail_sized_and_labelled_consistently():
    batch = render_patch_batch(np.random.default_rng(0), 8, side=32, crops_per_texture=2)
    assert batch.images.shape == (16, 32, 32, 3) and batch.images.dtype == np.uint8
    for index, kind, grade in zip(batch.class_index, batch.kind_index, batch.grade, strict=True):
        assert PATCH_CLASSES[index] == (KINDS[kind], grade)
    glass = batch.kind_index == KINDS.index("background")
    assert (batch.log_density[glass] == 0).all() and (batch.grade[glass] == 0).all()
    # glass is near white; tissue is stained
    if glass.any() and (~glass).any():
        assert batch.images[glass].mean() > batch.images[~glass].mean()


def test_a_detail_magnification_off_the_pyramid_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        render_patch_batch(np.random.default_rng(0), 1, slide_mpp=0.25, detail_mpp=0.3)


def test_pretraining_moves_the_towers_and_reports_a_grade_probe():
    from omnipath.model import OmniPathForConditionalGeneration, tiny_config

    torch.manual_seed(0)
    model = OmniPathForConditionalGeneration(tiny_config())
    vision = model.vision
    before = [p.detach().clone() for p in vision.parameters()]
    side, grid = int(model.thumb_side), int(model.grid)
    thumbs = [ThumbTargets(torch.rand(3, side, side), torch.zeros(len(CELL_TARGETS), grid, grid))]
    report = pretrain_towers(
        vision,
        thumbs,
        detail_scales=[1],
        detail_side=int(model.detail_side),
        slide_mpp=0.25,
        detail_mpp=0.5,
        n_textures=6,
        steps=3,
        batch_size=8,
        thumbs_per_step=1,
        probe_textures=12,
        progress=False,
    )
    assert report.steps == 3 and report.patches == 24
    assert 0.0 <= report.probe_accuracy <= 1.0 and report.probe_patches > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, vision.parameters(), strict=True))
    assert not vision.training  # handed back ready for the frozen stages
