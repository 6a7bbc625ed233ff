"""Choosing the next token: greedy at temperature 0, else seeded nucleus sampling."""

from __future__ import annotations

import torch


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator: sampling happens on CPU so one seed gives one answer on any device."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return generator


def next_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
) -> int:
    """logits: V (one position) → token id."""
    logits = logits.reshape(-1).float()
    if temperature <= 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = cumulative - sorted_probs < top_p
        keep[0] = True
        filtered = torch.zeros_like(probs)
        filtered[order[keep]] = sorted_probs[keep]
        probs = filtered / filtered.sum()
    return int(torch.multinomial(probs, 1, generator=generator).item())
