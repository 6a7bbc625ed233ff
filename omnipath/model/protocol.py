"""What the engine needs from a model: the contract `OmniPathForConditionalGeneration` and
`LlavaAdapter` both meet (tests/test_model_protocol.py).

`config` carries `image_token_id`, `mask_token_id` (None without masks), optionally
`pgdfc_config` and `box_format`. `language_model` is a transformers causal LM (decoder layers
with Llama-style self-attention, `get_decoder`, `get_output_embeddings`, `generate`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class EngineModel(Protocol):
    config: Any
    supports_masks: bool

    @property
    def language_model(self) -> nn.Module: ...

    @property
    def grid(self) -> int:
        """g: the thumbnail's token grid side."""

    @property
    def num_image_tokens(self) -> int:
        """N = g·g tokens per thumbnail."""

    @property
    def thumb_side(self) -> int:
        """Side of the square thumbnail the vision encoder takes."""

    def parameters(self, recurse: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids 1×T → the LLM's input embeddings 1×T×D."""

    def merge_embeddings(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        image_tokens: Any,
        mask_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The image (and `<mask>`) placeholders' embeddings replaced by their tokens."""

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B×3×H×W in [0, 1] → (tokens B×N×D, vision feature map B×C×g×g)."""

    def encode_detail_patches(self, images: torch.Tensor, tokens_per_patch: int) -> torch.Tensor:
        """S×3×h×w in [0, 1] → S×P×D detail tokens."""

    def encode_masks(self, maps: torch.Tensor) -> torch.Tensor:
        """A region map in the thumbnail frame → its `<mask>` input embedding."""

    def decode_masks(self, hidden: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        """`<mask>` hidden states K×D with feature maps → mask logits K×1×H×W."""
