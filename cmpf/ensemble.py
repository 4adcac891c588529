"""Geometric in/out-vocabulary ensemble (MODEL_SPEC.md §6.3); torch only, used by every backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def valid_mask_weights(pred_masks: torch.Tensor, res5_size, alpha: float, beta: float):
    """``ENSEMBLE_ON_VALID_MASK``: α, β times [mask has a positive pixel at CLIP resolution], (B, Q, 1)."""
    masks = F.interpolate(pred_masks, size=tuple(res5_size), mode="bilinear", align_corners=False)
    valid = ((masks > 0).flatten(2).sum(-1) > 0).to(pred_masks.dtype).unsqueeze(-1)
    return alpha * valid, beta * valid


def geometric_ensemble(in_logits: torch.Tensor, out_logits: torch.Tensor, seen: torch.Tensor,
                       alpha: float | torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """In/out-vocabulary geometric ensemble with void re-attached (MODEL_SPEC.md §6.3).

    Args:
        in_logits, out_logits: (B, Q, K+1), void last.
        seen: (K,) float, 1 for classes seen in training.
        alpha, beta: scalars or (B, Q, 1) tensors (ensemble-on-valid-mask).
    Returns:
        (B, Q, K+1) log(probabilities + 1e-8).
    """
    p_in = in_logits[..., :-1].softmax(-1)
    p_out = out_logits[..., :-1].softmax(-1)
    seen_term = (p_in ** (1 - alpha) * p_out ** alpha).log() * seen
    unseen_term = (p_in ** (1 - beta) * p_out ** beta).log() * (1 - seen)
    p_void = in_logits.softmax(-1)[..., -1:]
    probs = torch.cat([(seen_term + unseen_term).softmax(-1) * (1.0 - p_void), p_void], dim=-1)
    return torch.log(probs + 1e-8)
