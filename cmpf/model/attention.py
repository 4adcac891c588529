"""Multi-head attention with explicit projections (official ``nn.MultiheadAttention`` key names).

Batch-first (B, L, C) tensors. Explicit projections + a masked-attention core keep the module
exportable (no ``nn.MultiheadAttention`` fast paths) and let the Triton kernel replace the core.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cmpf.config import KernelImpl
from cmpf.kernels import masked_attention as mattn


class MultiheadAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, impl: KernelImpl = "torch"):
        super().__init__()
        self.num_heads = num_heads
        self.impl = impl
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                blocked: Optional[torch.Tensor] = None) -> torch.Tensor:
        """query (B, Lq, C), key/value (B, Lk, C), blocked (B, 1 or heads, Lq, Lk) bool → (B, Lq, C)."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        b, lq, c = query.shape
        h = self.num_heads
        q = F.linear(query, w_q, b_q).view(b, lq, h, c // h).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(b, -1, h, c // h).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(b, -1, h, c // h).transpose(1, 2)
        if self.impl == "torch":
            out = mattn.masked_attention_ref(q, k, v, blocked)
        else:
            out = mattn.masked_attention(q, k, v, blocked, impl=self.impl)
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, c))
