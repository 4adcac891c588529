"""Multi-scale deformable attention (Deformable DETR), pure torch, plus the SAM-branch index quirk.

Consumes values (N, S, M, Dh) flattened over L levels of sizes ``spatial_shapes`` [(H_l, W_l)],
sampling locations (N, Lq, M, L, P, 2) in [0, 1] (x, y) and attention weights (N, Lq, M, L, P);
produces (N, Lq, M*Dh). Bilinear sampling with zero padding and align_corners=False, i.e. the
official CUDA kernel's convention (``grid_sample`` with grid = 2*loc - 1).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def ms_deform_attn_ref(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    upcast: bool = False,
) -> torch.Tensor:
    """Reference deformable attention through ``grid_sample``.

    Args:
        value: (N, S, M, Dh), S = sum of H_l * W_l.
        spatial_shapes: L pairs (H_l, W_l), in the order the levels are flattened in ``value``.
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y).
        attention_weights: (N, Lq, M, L, P).
        upcast: compute in float32.
    Returns:
        (N, Lq, M * Dh).
    """
    if upcast:
        value = value.float()
        sampling_locations = sampling_locations.float()
        attention_weights = attention_weights.float()
    n, _, m, dh = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        # (N, H*W, M, Dh) -> (N*M, Dh, H, W)
        v = values[level].flatten(2).transpose(1, 2).reshape(n * m, dh, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N*M, Dh, Lq, L*P) weighted by (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, n_levels * n_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(n, m * dh, lq).transpose(1, 2)


def fold_levels_like_official_kernel(
    sampling_locations: torch.Tensor, attention_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reproduce the official CUDA kernel reading an L-level buffer when fed one level.

    FrozenSeg's SAM-branch encoder is built for 3 levels and fed 1 (MODEL_SPEC.md §4.3). The compiled
    kernel takes the level count from ``spatial_shapes`` (1) and walks the contiguous
    (Lq, M, L, P[, 2]) buffers with single-level strides, so query/head row r reads row r of the
    buffer viewed as (-1, P[, 2]) - which belongs to another query, head and level. The released
    checkpoints were trained with this, and evaluated at batch 1; we apply the rule per image so
    results do not depend on the batch composition.

    Args:
        sampling_locations: (N, Lq, M, L, P, 2).
        attention_weights: (N, Lq, M, L, P), already softmaxed over L*P.
    Returns:
        ((N, Lq, M, 1, P, 2), (N, Lq, M, 1, P)).
    """
    n, lq, m, _, p, _ = sampling_locations.shape
    rows = lq * m
    loc = sampling_locations.reshape(n, -1, p, 2)[:, :rows].reshape(n, lq, m, 1, p, 2)
    w = attention_weights.reshape(n, -1, p)[:, :rows].reshape(n, lq, m, 1, p)
    return loc, w
