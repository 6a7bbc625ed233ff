"""Stage 0 of omnipath-mini: pretrain the vision towers before the language model sees them.

LLaVA and UNI get their towers from large pretraining; omnipath-mini's are tiny and random.
Trained only through the LM's loss at batch size 1 they never learned the nuclear texture
that carries a lesion's grade (the v2 model card). Here both towers (the whole
`MultiScaleVision`) are trained directly, at a learning rate fit for random weights, with
real batches, on two kinds of labelled pixels:

- detail patches (`omnipath.synth.patches`): side×side crops at the detail magnification,
  encoded as PGDFC encodes them (`encode_scales = detail scales`), mean-pooled, with a
  linear head for the 8 classes (glass, stroma, carcinoma 1–3, inflammation 1–3: tissue or
  background, kind and grade at once) and one for the log nucleus density;
- slide thumbnails (the training split's): every token of the fused map predicts the
  fraction of its cell that is carcinoma, inflammation and tissue (what PGDFC's probe, the
  counts, boxes and masks need to see on the thumbnail).

`grade_probe_accuracy` then fits a linear probe of the grade on FROZEN pooled features of
patches and reports its accuracy on held-out patches (rendered from another seed).
The heads are thrown away; only the towers go on to stages 1 and 2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omnipath.pgdfc import rgb_arrays_to_tensor
from omnipath.synth.patches import PATCH_CLASSES, PatchBatch, render_patch_batch

# Thumbnail cell targets, in this channel order.
CELL_TARGETS = ("carcinoma", "inflammation", "tissue")


@dataclass
class ThumbTargets:
    """One training slide: image 3×S×S in [0, 1] (thumb frame); cells 3×g×g fractions of
    each cell that is carcinoma, inflammation, tissue (`CELL_TARGETS`)."""

    image: torch.Tensor
    cells: torch.Tensor


@dataclass
class TowerReport:
    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    probe_accuracy: float  # linear probe of the grade, held-out patches
    probe_patches: int  # held-out lesion patches it was measured on
    patches: int  # distinct training patches rendered


def pooled_patch_features(
    vision: nn.Module, pixels: torch.Tensor, scales: list[int]
) -> torch.Tensor:
    """N×3×d×d → N×C: the fused map of the detail scales, mean-pooled over the grid."""
    return vision(pixels, encode_scales=scales).mean(dim=(2, 3))


def _dihedral(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    k = int(torch.randint(4, (1,), generator=generator))
    out = torch.rot90(pixels, k, dims=(-2, -1))
    return out.flip(-1) if bool(torch.randint(2, (1,), generator=generator)) else out


def pretrain_towers(
    vision: nn.Module,
    thumbs: list[ThumbTargets],
    *,
    detail_scales: list[int],
    detail_side: int,
    slide_mpp: float,
    detail_mpp: float,
    n_textures: int = 1200,
    steps: int = 800,
    batch_size: int = 64,
    thumbs_per_step: int = 4,
    lr: float = 1e-3,
    probe_textures: int = 240,
    time_limit_s: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TowerReport:
    """Train `vision` (a MultiScaleVision) in place; returns the figures for the card."""
    rng = np.random.default_rng([seed, 0xD7])
    started = time.monotonic()
    pool = render_patch_batch(
        rng, n_textures, side=detail_side, slide_mpp=slide_mpp, detail_mpp=detail_mpp
    )
    if progress:
        print(
            f"stage 0: {len(pool.images)} patches rendered in {time.monotonic() - started:.0f} s",
            flush=True,
        )
    pixels = rgb_arrays_to_tensor(pool.images)
    classes = torch.from_numpy(pool.class_index)
    density = torch.from_numpy(pool.log_density)
    channels = vision.channels
    heads = nn.ModuleDict(
        {
            "patch": nn.Linear(channels, len(PATCH_CLASSES)),
            "density": nn.Linear(channels, 1),
            "cells": nn.Conv2d(channels, len(CELL_TARGETS), kernel_size=1),
        }
    )
    params = list(vision.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(seed)
    vision.train()
    losses: list[float] = []
    train_started = time.monotonic()
    step = 0
    for step in range(1, steps + 1):
        index = torch.randint(len(pixels), (batch_size,), generator=generator)
        batch = _dihedral(pixels[index], generator)
        features = pooled_patch_features(vision, batch, detail_scales)
        loss = F.cross_entropy(heads["patch"](features), classes[index])
        loss = loss + 0.5 * F.mse_loss(heads["density"](features).squeeze(-1), density[index])
        if thumbs:
            chosen = torch.randint(len(thumbs), (thumbs_per_step,), generator=generator)
            k = int(torch.randint(4, (1,), generator=generator))
            images = torch.stack([thumbs[i].image for i in chosen]).rot90(k, dims=(-2, -1))
            targets = torch.stack([thumbs[i].cells for i in chosen]).rot90(k, dims=(-2, -1))
            logits = heads["cells"](vision(images))
            loss = loss + F.binary_cross_entropy_with_logits(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if progress and (step % 50 == 0 or step == 1):
            print(f"stage 0 step {step}/{steps} loss {np.mean(losses[-50:]):.3f}", flush=True)
        if time_limit_s is not None and time.monotonic() - train_started > time_limit_s:
            break
    vision.eval()
    seconds = time.monotonic() - started
    accuracy, n_probe = grade_probe_accuracy(
        vision,
        detail_scales=detail_scales,
        detail_side=detail_side,
        slide_mpp=slide_mpp,
        detail_mpp=detail_mpp,
        seed=seed,
        n_textures=probe_textures,
    )
    if progress:
        print(f"stage 0: grade linear probe {100 * accuracy:.1f} % on {n_probe} held-out patches")
    return TowerReport(
        steps=step,
        seconds=seconds,
        first_loss=float(np.mean(losses[:10])),
        last_loss=float(np.mean(losses[-10:])),
        probe_accuracy=accuracy,
        probe_patches=n_probe,
        patches=len(pixels),
    )


@torch.no_grad()
def _features(vision: nn.Module, batch: PatchBatch, scales: list[int]) -> torch.Tensor:
    pixels = rgb_arrays_to_tensor(batch.images)
    return torch.cat(
        [
            pooled_patch_features(vision, pixels[i : i + 256], scales)
            for i in range(0, len(pixels), 256)
        ]
    )


def grade_probe_accuracy(
    vision: nn.Module,
    *,
    detail_scales: list[int],
    detail_side: int,
    slide_mpp: float,
    detail_mpp: float,
    seed: int = 0,
    n_textures: int = 240,
) -> tuple[float, int]:
    """Linear probe of the grade (1–3) on frozen pooled features of LESION patches: fitted on
    patches of one fresh seed, scored on patches of another (neither seen in stage 0).
    Returns (accuracy, number of scored patches)."""
    batches = [
        render_patch_batch(
            np.random.default_rng([seed, 0x9B0E, part]),
            n_textures,
            side=detail_side,
            slide_mpp=slide_mpp,
            detail_mpp=detail_mpp,
        )
        for part in (0, 1)
    ]
    fit, held = [
        (
            _features(vision, b, detail_scales)[b.grade > 0],
            torch.from_numpy(b.grade[b.grade > 0] - 1),
        )
        for b in batches
    ]
    mean, std = fit[0].mean(0), fit[0].std(0) + 1e-6
    probe = nn.Linear(fit[0].shape[1], 3)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=0.5, max_iter=200)
    x_fit = (fit[0] - mean) / std

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x_fit), fit[1]) + 1e-3 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = probe((held[0] - mean) / std).argmax(dim=1)
    return float((predicted == held[1]).float().mean()), int(len(held[1]))
