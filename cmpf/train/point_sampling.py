"""Point sampling of mask logits (PointRend), as the official matcher and criterion use it.

Coordinates are (x, y) in [0, 1] relative to the mask extent; ``point_sample`` reads them with
``grid_sample(align_corners=False)`` at ``2·coords − 1``, so masks of different resolutions
(predictions at S/4, targets at S) are sampled at the same physical points.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``inputs`` at normalised points.

    Args:
        inputs: (N, C, H, W) maps.
        coords: (N, P, 2) (x, y) points in [0, 1].
    Returns:
        (N, C, P) sampled values.
    """
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # (N, P, 1, 2)
    return F.grid_sample(inputs, grid.to(inputs.dtype), align_corners=False).squeeze(3)


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of class-agnostic mask logits: −|logit| (highest at the decision boundary)."""
    return -torch.abs(logits)


def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Importance sampling of points (detectron2 ``get_uncertain_point_coords_with_randomness``).

    Draws ``num_points · oversample_ratio`` uniform candidates per mask, keeps the
    ``importance_sample_ratio · num_points`` most uncertain ones and fills up with fresh uniform
    points.

    Args:
        logits: (N, 1, H, W) mask logits (treated as constants).
        num_points: points per mask.
        oversample_ratio: candidate multiplier (≥ 1).
        importance_sample_ratio: fraction of points chosen by uncertainty (in [0, 1]).
        generator: torch RNG (default: the global one of ``logits.device``).
    Returns:
        (N, num_points, 2) coordinates in [0, 1].
    """
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError("need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1")
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=logits.device, generator=generator)
    uncertainty = calculate_uncertainty(point_sample(logits, coords))  # (N, 1, num_sampled)
    num_uncertain = int(importance_sample_ratio * num_points)
    idx = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1).indices  # (N, num_uncertain)
    coords = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        fresh = torch.rand(n, num_random, 2, device=logits.device, generator=generator)
        coords = torch.cat([coords, fresh], dim=1)
    return coords
