"""From generated tokens to the Answer: the text (with `<mask>` kept in place), boxes parsed
from it, masks decoded from the `<mask>` hidden states."""

from __future__ import annotations

import time
from typing import Any

import torch

from omnipath.boxes import BOX_FORMAT_SLIDE, box_frame, boxes_from_text
from omnipath.coords import ThumbFrame
from omnipath.engine.masks import place_mask
from omnipath.engine.results import Answer
from omnipath.errors import CapabilityError


def decode_text(tokenizer: Any, ids: list[int], mask_id: int | None) -> str:
    """Generated ids → text: special tokens dropped, except `<mask>` kept as "<mask>"
    so the reader sees where each mask belongs."""
    pieces: list[list[int]] = [[]]
    for token in ids:
        if token == mask_id:
            pieces.append([])
        else:
            pieces[-1].append(token)
    texts = [tokenizer.decode(p, skip_special_tokens=True) for p in pieces]
    return "<mask>".join(texts)


def dtype_of(model: Any, submodule: str) -> torch.dtype:
    """The parameter dtype of one of the model's parts (16-bit next to a 4-bit LLM)."""
    module = getattr(model, submodule, None)
    for parameter in module.parameters() if module is not None else ():
        return parameter.dtype
    return next(model.parameters()).dtype


def finish_answer(
    model: Any,
    answer: Answer,
    start: float,
    frame: ThumbFrame,
    feature_map: torch.Tensor | None,
    mask_hidden: list[torch.Tensor],
) -> Answer:
    """Boxes from the text, masks from the `<mask>` states, total time."""
    box_format = str(getattr(model.config, "box_format", None) or BOX_FORMAT_SLIDE)
    answer.boxes = boxes_from_text(
        answer.text,
        l0_width=frame.l0_width,
        l0_height=frame.l0_height,
        frame=box_frame(box_format),
        thumb_frame=frame,
    )
    if answer.tokens["masks"] and not getattr(model, "supports_masks", False):
        answer.error = str(CapabilityError("This model cannot draw masks; only its text is shown."))
    elif mask_hidden:
        started = time.perf_counter()
        with torch.inference_mode():
            hidden = torch.stack(mask_hidden).to(dtype_of(model, "mask_decoder"))
            feature_map = feature_map.unsqueeze(0).expand(len(mask_hidden), -1, -1, -1)
            logits = model.decode_masks(hidden, feature_map)
        answer.masks = [place_mask(m, frame) for m in logits]
        answer.timings["masks"] = time.perf_counter() - started
    answer.timings["total"] = time.perf_counter() - start
    return answer
