"""Mask modules: a ResNet mask encoder (`<mask>` in the input) and a SAM-style mask decoder
(`<mask>` in the output), plus the mask loss (per-pixel BCE + Dice).

Frames: every map here covers the square model input (the `thumb_` frame, padding included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, TwoWayTransformer
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from omnipath.model.configuration import ModelInputError, OmniPathMaskConfig


class MaskEncoder(nn.Module):
    """B×1×H×W binary map in [0,1] → B×D_llm, the embedding that replaces an input `<mask>`.

    torchvision `ResNet(Bottleneck, layers)` (ResNet-50 for [3, 4, 6, 3]) with a 1-channel stem;
    its classifier is the linear map to D_llm.
    """

    def __init__(self, config: OmniPathMaskConfig, text_hidden: int) -> None:
        super().__init__()
        self.image_size = config.encoder_image_size
        self.resnet = ResNet(
            Bottleneck,
            list(config.encoder_layers),
            num_classes=text_hidden,
            width_per_group=config.encoder_width_per_group,
        )
        # One input channel (a binary map) instead of RGB.
        self.resnet.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.resnet.conv1.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if maps.ndim != 4 or maps.shape[1] != 1:
            raise ModelInputError(f"Mask maps must be B×1×H×W, got shape {tuple(maps.shape)}.")
        weight = self.resnet.conv1.weight
        x = maps.to(device=weight.device, dtype=weight.dtype)
        if x.shape[-2:] != (self.image_size, self.image_size):
            # "area" averages when shrinking (a soft edge, no aliasing); bilinear when growing.
            mode = "area" if x.shape[-1] >= self.image_size else "bilinear"
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode=mode)
        return self.resnet(x * 2.0 - 1.0)


class _PositionEmbedding(PositionEmbeddingRandom):
    """SAM's random-Fourier positional encoding, usable when the model is in bf16/fp16
    (SAM's version multiplies float32 coordinates by the buffer and fails on mixed dtypes)."""

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        return super()._pe_encoding(coords.to(self.positional_encoding_gaussian_matrix.dtype))


class MaskDecoderHead(nn.Module):
    """(hidden K×D_llm, fused vision map K×C_v×g×g) → K×1×4g×4g mask logits (thumb frame).

    The LM hidden state is projected to `transformer_dim` and is the decoder's one sparse
    prompt; the vision map through a 1×1 conv replaces SAM's image embedding; a learned
    "no mask" embedding is the dense prompt (as in SAM's prompt encoder).
    """

    def __init__(self, config: OmniPathMaskConfig, text_hidden: int, vision_channels: int) -> None:
        super().__init__()
        dim = config.transformer_dim
        self.hidden_proj = nn.Sequential(
            nn.Linear(text_hidden, text_hidden), nn.GELU(), nn.Linear(text_hidden, dim)
        )
        self.feature_proj = nn.Conv2d(vision_channels, dim, kernel_size=1)
        self.pe_layer = _PositionEmbedding(dim // 2)
        self.no_mask_embed = nn.Embedding(1, dim)
        self.decoder = MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=dim,
                num_heads=config.decoder_num_heads,
                mlp_dim=config.decoder_mlp_dim,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        )

    def forward(self, hidden: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        if hidden.ndim != 2 or feature_map.ndim != 4 or hidden.shape[0] != feature_map.shape[0]:
            raise ModelInputError(
                "decode_masks needs hidden K×D and feature_map K×C×g×g with the same K; got "
                f"{tuple(hidden.shape)} and {tuple(feature_map.shape)}."
            )
        weight = self.feature_proj.weight
        dtype = weight.dtype
        sparse = self.hidden_proj(hidden.to(weight.device, dtype)).unsqueeze(1)  # K×1×dim
        image = self.feature_proj(feature_map.to(weight.device, dtype))  # K×dim×g×g
        g_h, g_w = image.shape[-2:]
        pe = self.pe_layer((g_h, g_w)).unsqueeze(0).to(dtype)  # 1×dim×g×g
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, g_h, g_w)
        if hidden.shape[0] == 0:
            side = 4 * g_h  # the decoder upsamples its grid 4×
            return image.new_zeros((0, 1, side, 4 * g_w))
        masks = []
        # SAM's decoder repeats the image once per prompt; one (image, prompt) pair per call
        # keeps each mask on its own image.
        for i in range(hidden.shape[0]):
            logits, _ = self.decoder(
                image_embeddings=image[i : i + 1],
                image_pe=pe,
                sparse_prompt_embeddings=sparse[i : i + 1],
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            masks.append(logits)
        return torch.cat(masks, dim=0)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over masks of 1 − (2·|p∩t| + eps) / (|p| + |t| + eps); K×1×H×W inputs."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2.0 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1.0 - (numerator + eps) / (denominator + eps)).mean()


def mask_loss(
    logits: torch.Tensor, targets: torch.Tensor, bce_weight: float, dice_weight: float
) -> torch.Tensor:
    """K×1×h×w logits vs K×1×H×W targets in {0,1} (logits resized to the targets' size)."""
    if logits.shape[0] != targets.shape[0]:
        raise ModelInputError(
            f"{logits.shape[0]} output <mask> tokens but {targets.shape[0]} mask targets."
        )
    if targets.ndim != 4 or targets.shape[1] != 1:
        raise ModelInputError(f"Mask targets must be K×1×H×W, got {tuple(targets.shape)}.")
    logits = logits.float()
    targets = targets.to(device=logits.device, dtype=torch.float32)
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(
            logits, size=targets.shape[-2:], mode="bilinear", align_corners=False
        )
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    return bce_weight * bce + dice_weight * dice_loss(logits, targets)
