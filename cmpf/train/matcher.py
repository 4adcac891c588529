"""Hungarian matching of predicted masks to ground-truth segments (official ``HungarianMatcher``).

Consumes per-image class logits (Q, K+1), mask logits (Q, h, w) and targets (``labels`` (M,),
``masks`` (M, H, W)); produces, per image, the matched query indices and target indices. The cost is
``cost_class · (−p[label]) + cost_mask · BCE + cost_dice · dice``, the mask terms on points drawn
uniformly once per image and shared by every prediction and target, all in float32.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from cmpf.train.point_sampling import point_sample

MatchIndices = list[tuple[torch.Tensor, torch.Tensor]]


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean binary cross-entropy.

    Args:
        inputs: (N, P) logits.
        targets: (M, P) values in [0, 1].
    Returns:
        (N, M) cost; entry (n, m) is the mean over P of BCE(inputs[n], targets[m]).
    """
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / inputs.shape[1]


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice loss ``1 − (2·|σ(x)·t| + 1) / (|σ(x)| + |t| + 1)``.

    Args:
        inputs: (N, P) logits.
        targets: (M, P) values in [0, 1].
    Returns:
        (N, M) cost.
    """
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher:
    """One-to-one assignment of queries to targets minimising the official matching cost.

    Args:
        cost_class: weight of −p(target class).
        cost_mask: weight of the point-sampled BCE.
        cost_dice: weight of the point-sampled dice loss.
        num_points: uniformly random points per image (shared by all masks).
    """

    def __init__(
        self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544
    ) -> None:
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def cost_matrix(
        self,
        logits: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
        target_masks: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Matching cost of one image.

        Args:
            logits: (Q, K+1) class logits.
            masks: (Q, h, w) mask logits.
            labels: (M,) target classes.
            target_masks: (M, H, W) binary target masks.
            generator: torch RNG for the points.
        Returns:
            (Q, M) float32 cost.
        """
        logits, masks = logits.float(), masks.float()
        cost_class = -logits.softmax(-1)[:, labels]  # (Q, M)
        coords = torch.rand(1, self.num_points, 2, device=masks.device, generator=generator)
        out_points = point_sample(masks[:, None], coords.expand(masks.shape[0], -1, -1))[:, 0]  # (Q, P)
        tgt = target_masks[:, None].to(torch.float32)
        tgt_points = point_sample(tgt, coords.expand(tgt.shape[0], -1, -1))[:, 0]  # (M, P)
        cost_mask = batch_sigmoid_ce_cost(out_points, tgt_points)
        cost_dice = batch_dice_cost(out_points, tgt_points)
        return self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice

    @torch.no_grad()
    def __call__(self, outputs: dict[str, Any], targets: Sequence[dict[str, torch.Tensor]]) -> MatchIndices:
        """Match every image of a batch.

        Args:
            outputs: ``pred_logits`` (B, Q, K+1) and ``pred_masks`` (B, Q, h, w).
            targets: per image ``labels`` (M,) int64 and ``masks`` (M, H, W).
        Returns:
            Per image (query indices, target indices), int64 tensors of length min(Q, M), on CPU.
        """
        indices = []
        with torch.autocast(outputs["pred_masks"].device.type, enabled=False):
            for b, target in enumerate(targets):
                if len(target["labels"]) == 0:
                    empty = torch.zeros(0, dtype=torch.int64)
                    indices.append((empty, empty))
                    continue
                cost = self.cost_matrix(
                    outputs["pred_logits"][b], outputs["pred_masks"][b], target["labels"], target["masks"]
                )
                rows, cols = linear_sum_assignment(cost.cpu().numpy())
                indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
