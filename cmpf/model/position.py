"""DETR sine positional encoding (normalised, scale 2π): (B, C, H, W) → (B, 2*num_feats, H, W)."""

from __future__ import annotations

import math

import torch


def sine_position_encoding(x: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Positional encoding of a map's grid; only the shape/device of ``x`` matter.

    Each axis interleaves sin/cos, the y half comes before the x half (Mask2Former convention).
    Built with tensor ops on the shape so export keeps H and W symbolic.
    """
    b, _, h, w = x.shape
    ones = torch.ones_like(x[:, 0], dtype=torch.float32)  # (B, H, W)
    y_embed = ones.cumsum(1)
    x_embed = ones.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="trunc") / num_feats)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
