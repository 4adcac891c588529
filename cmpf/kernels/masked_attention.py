"""Masked multi-head attention with the Mask2Former rule.

Consumes q (B, H, Lq, D), k / v (B, H, Lk, D) and a boolean ``blocked`` mask (B, H or 1, Lq, Lk)
where True means "this key is hidden from this query"; produces (B, H, Lq, D). A query whose mask
blocks every key attends to all keys (Mask2Former resets such rows; a fully-masked softmax row
would otherwise be NaN in ONNX Runtime and 0 in some torch paths).
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def masked_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocked: Optional[torch.Tensor],
    upcast: bool = False,
) -> torch.Tensor:
    """Reference: softmax(q k^T / sqrt(D) with blocked keys at -inf) v, fully-blocked rows reset.

    Args:
        q: (B, H, Lq, D) queries.
        k: (B, H, Lk, D) keys.
        v: (B, H, Lk, D) values.
        blocked: (B, H or 1, Lq, Lk) bool, True = key hidden; None = no mask.
        upcast: compute in float32 and return float32 (a reference for low-precision inputs).
    """
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    if blocked is not None:
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
        scores = scores.masked_fill(blocked, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)
