"""The vision → language projector: LLaVA-1.5's 2-layer MLP with GELU."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class VisionProjector(nn.Module):
    """B×N×C_v → B×N×D_llm: Linear(C_v, D) → activation → Linear(D, D)."""

    def __init__(self, vision_channels: int, text_hidden: int, act: str = "gelu") -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_channels, text_hidden)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))
