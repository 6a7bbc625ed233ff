"""Masks between the thumb frame (what the model sees and draws) and level 0 (the slide)."""

from __future__ import annotations

import math

import torch

from omnipath.coords import L0Rect, ThumbFrame
from omnipath.engine.results import MaskResult


def place_mask(logits: torch.Tensor, frame: ThumbFrame) -> MaskResult:
    """Mask logits h×w over the whole square thumbnail → the bitmap cropped to the slide's
    content (the padding cut off) and the level-0 rectangle it covers."""
    logits = logits.detach().float().reshape(logits.shape[-2], logits.shape[-1]).cpu()
    mask_h, mask_w = logits.shape
    per_thumb_x = mask_w / frame.side
    per_thumb_y = mask_h / frame.side
    content_w, content_h = frame.content_size()
    thumb_x0 = (frame.side - content_w) // 2  # where ThumbFrame.render pasted the content
    thumb_y0 = (frame.side - content_h) // 2
    mask_x0 = max(0, math.floor(thumb_x0 * per_thumb_x))
    mask_y0 = max(0, math.floor(thumb_y0 * per_thumb_y))
    mask_x1 = min(mask_w, max(mask_x0 + 1, math.ceil((thumb_x0 + content_w) * per_thumb_x)))
    mask_y1 = min(mask_h, max(mask_y0 + 1, math.ceil((thumb_y0 + content_h) * per_thumb_y)))
    bitmap = (logits[mask_y0:mask_y1, mask_x0:mask_x1] > 0).numpy()
    l0_x0, l0_y0 = frame.thumb_to_l0(mask_x0 / per_thumb_x, mask_y0 / per_thumb_y)
    l0_x1, l0_y1 = frame.thumb_to_l0(mask_x1 / per_thumb_x, mask_y1 / per_thumb_y)
    l0_rect = L0Rect(
        round(l0_x0), round(l0_y0), max(1, round(l0_x1 - l0_x0)), max(1, round(l0_y1 - l0_y0))
    ).clip(frame.l0_width, frame.l0_height)
    return MaskResult(bitmap=bitmap, l0_rect=l0_rect)


def region_map(l0_rect: L0Rect, frame: ThumbFrame) -> torch.Tensor:
    """A level-0 rectangle the user points at → 1×1×side×side float {0, 1} in the thumb frame
    (the layout `model.encode_masks` takes); at least one pixel is set."""
    side = frame.side
    thumb_x0, thumb_y0 = frame.l0_to_thumb(l0_rect.x, l0_rect.y)
    thumb_x1, thumb_y1 = frame.l0_to_thumb(l0_rect.x1, l0_rect.y1)
    x0 = min(side - 1, max(0, math.floor(thumb_x0)))
    y0 = min(side - 1, max(0, math.floor(thumb_y0)))
    x1 = min(side, max(x0 + 1, math.ceil(thumb_x1)))
    y1 = min(side, max(y0 + 1, math.ceil(thumb_y1)))
    result = torch.zeros(1, 1, side, side)
    result[..., y0:y1, x0:x1] = 1.0
    return result


def region_sentence(l0_rect: L0Rect, l0_width: int, l0_height: int) -> str:
    """The region as words, for models without a mask encoder."""
    x0, x1 = l0_rect.x / l0_width, l0_rect.x1 / l0_width
    y0, y1 = l0_rect.y / l0_height, l0_rect.y1 / l0_height
    return (
        f"About the region at x {x0:.2f}-{x1:.2f}, y {y0:.2f}-{y1:.2f} "
        "(fractions of the slide's width and height):"
    )
