"""Set criterion of Mask2Former / FC-CLIP / FrozenSeg (official ``SetCriterion`` semantics).

Consumes model outputs (``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, h, w), ``aux_outputs``)
and targets (per image ``labels`` (M,), ``masks`` (M, H, W)); produces a dict of unweighted losses
``loss_ce``, ``loss_mask``, ``loss_dice`` and the same with suffix ``_i`` for auxiliary output i.
``weight_dict`` gives the weights (CE 2, BCE 5, dice 5 on every output) and :meth:`total` the
weighted sum. Mask losses use importance-sampled points; every term is divided by the number of
target masks averaged across ranks (at least 1).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cmpf.train.matcher import HungarianMatcher, MatchIndices
from cmpf.train.point_sampling import point_sample, uncertain_point_coords


def sigmoid_ce_loss(logits: torch.Tensor, labels: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Mean-over-points BCE, summed over masks and divided by ``num_masks``.

    Args:
        logits: (N, P) point logits.
        labels: (N, P) point targets in [0, 1].
        num_masks: normaliser.
    """
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss ``1 − (2·|σ(x)·t| + 1) / (|σ(x)| + |t| + 1)`` summed over masks / ``num_masks``.

    Args:
        logits: (N, P) point logits.
        labels: (N, P) point targets in [0, 1].
        num_masks: normaliser.
    """
    probs = logits.sigmoid()
    numerator = 2 * (probs * labels).sum(-1)
    denominator = probs.sum(-1) + labels.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def average_num_masks(targets: Sequence[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Number of target masks in the batch, averaged over ranks when distributed, at least 1."""
    num = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        world_size = dist.get_world_size()
    return torch.clamp(num / world_size, min=1).item()


class SetCriterion(nn.Module):
    """Hungarian-matched classification and point-sampled mask losses with deep supervision.

    Args:
        num_classes: K, the number of classes (logits carry K + 1 entries, the last is void).
        matcher: the matcher run on every output.
        class_weight, mask_weight, dice_weight: loss weights (official 2 / 5 / 5).
        eos_coef: CE weight of the void class (official 0.1).
        num_points: sampled points per mask (official 112² = 12,544).
        oversample_ratio, importance_sample_ratio: importance sampling (official 3.0 / 0.75).
        num_aux: number of auxiliary outputs weighted like the final one (official 9).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        *,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        num_aux: int = 9,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)
        base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.weight_dict = dict(base)
        for i in range(num_aux):
            self.weight_dict.update({f"{k}_{i}": v for k, v in base.items()})

    def loss_labels(
        self, logits: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]], indices: MatchIndices
    ) -> torch.Tensor:
        """Weighted CE over all queries; unmatched queries target void. logits: (B, Q, K+1)."""
        logits = logits.float()
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src.to(logits.device)] = targets[b]["labels"].to(logits.device)[tgt.to(logits.device)]
        return F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.device))

    def loss_masks(
        self,
        masks: torch.Tensor,
        targets: Sequence[dict[str, torch.Tensor]],
        indices: MatchIndices,
        num_masks: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Point-sampled BCE and dice of the matched masks. masks: (B, Q, h, w) logits."""
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        src_masks = masks.float()[batch_idx.to(masks.device), src_idx.to(masks.device)][:, None]  # (N, 1, h, w)
        if src_masks.shape[0] == 0:  # no target in the batch: keep the graph connected, add nothing
            zero = masks.sum() * 0.0
            return zero, zero
        size = _max_size(targets)
        target_masks = torch.cat(
            [pad_masks(t["masks"][tgt.to(t["masks"].device)], size) for t, (_, tgt) in zip(targets, indices)]
        )[:, None].to(src_masks)  # (N, 1, H, W)
        with torch.no_grad():
            coords = uncertain_point_coords(
                src_masks, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            point_labels = point_sample(target_masks, coords)[:, 0]
        point_logits = point_sample(src_masks, coords)[:, 0]
        return sigmoid_ce_loss(point_logits, point_labels, num_masks), dice_loss(point_logits, point_labels, num_masks)

    def losses_for(
        self,
        outputs: dict[str, Any],
        targets: Sequence[dict[str, torch.Tensor]],
        num_masks: float,
        indices: Optional[MatchIndices] = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of one output (final or auxiliary); matches it unless ``indices`` are given."""
        if indices is None:
            indices = self.matcher(outputs, targets)
        loss_mask, loss_dice = self.loss_masks(outputs["pred_masks"], targets, indices, num_masks)
        return {
            "loss_ce": self.loss_labels(outputs["pred_logits"], targets, indices),
            "loss_mask": loss_mask,
            "loss_dice": loss_dice,
        }

    def forward(self, outputs: dict[str, Any], targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Unweighted losses of the final output and of each auxiliary output (suffix ``_i``)."""
        num_masks = average_num_masks(targets, outputs["pred_logits"].device)
        losses = self.losses_for(outputs, targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", ())):
            losses.update({f"{k}_{i}": v for k, v in self.losses_for(aux, targets, num_masks).items()})
        return losses

    def total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of the losses that have a weight (official: others are dropped)."""
        return sum(losses[k] * w for k, w in self.weight_dict.items() if k in losses)


def _max_size(targets: Sequence[dict[str, torch.Tensor]]) -> tuple[int, int]:
    return max(t["masks"].shape[-2] for t in targets), max(t["masks"].shape[-1] for t in targets)


def pad_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad (M, H, W) masks at the bottom/right to ``size`` (official nested-tensor batching)."""
    h, w = masks.shape[-2:]
    if (h, w) == tuple(size):
        return masks
    out = masks.new_zeros((masks.shape[0], *size))
    out[:, :h, :w] = masks
    return out
