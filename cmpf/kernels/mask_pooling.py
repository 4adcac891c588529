"""Mask pooling: the area-normalised mean of a feature map over each binarised mask.

Consumes features (B, C, H, W) and mask logits (B, Q, h, w); produces (B, Q, C). The logits are
bilinearly resized to (H, W) (align_corners=False) when the sizes differ, binarised at > 0 and
normalised by their pixel count + 1e-8 (FC-CLIP / FrozenSeg ``MaskPooling``); the mask is
treated as a constant (no gradient flows into the mask logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_pooling_ref(x: torch.Tensor, mask_logits: torch.Tensor, upcast: bool = False) -> torch.Tensor:
    """Reference mask pooling.

    Args:
        x: (B, C, H, W) features.
        mask_logits: (B, Q, h, w) mask logits (any size; resized to (H, W)).
        upcast: compute in float32.
    Returns:
        (B, Q, C) pooled features.
    """
    if upcast:
        x, mask_logits = x.float(), mask_logits.float()
    if mask_logits.shape[-2:] != x.shape[-2:]:
        mask_logits = F.interpolate(mask_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    mask = (mask_logits.detach() > 0).to(x.dtype)
    denom = mask.sum(dim=(-1, -2), keepdim=True) + 1e-8
    return torch.einsum("bchw,bqhw->bqc", x, mask / denom)
