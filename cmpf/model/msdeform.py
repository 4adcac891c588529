"""Multi-scale deformable-attention encoder (Mask2Former pixel decoder), pure PyTorch.

Consumes L feature levels (B, C, H_l, W_l) with their positional encodings; produces the encoded
tokens (B, sum H_l*W_l, C). ``n_levels`` is the number of levels the module is *built* for: the SAM
branch is built for 3 and fed 1, which the official CUDA kernel resolves by reading the first rows
of its 3-level buffers (``fold_levels_like_official_kernel``); we reproduce that.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cmpf.kernels import ms_deform_attn as msda
from cmpf.config import KernelImpl


class MSDeformAttn(nn.Module):
    """Deformable attention with the official parameter names (sampling_offsets, attention_weights,
    value_proj, output_proj)."""

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int, impl: KernelImpl = "torch"):
        super().__init__()
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.impl = impl
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_in: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """query (N, Lq, C), reference_points (N, Lq, 1, 2) in [0, 1], value_in (N, S, C) → (N, Lq, C)."""
        n, lq, c = query.shape
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_in).view(n, -1, m, c // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, lv, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, lv * p).softmax(-1).view(n, lq, m, lv, p)
        # offsets are in pixels of each level: divide by (W_l, H_l). With one fed level its size
        # broadcasts over all built levels, as upstream. Per-level scalar division keeps sizes symbolic.
        fed = [spatial_shapes[i if len(spatial_shapes) == lv else 0] for i in range(lv)]
        scaled = torch.stack(
            [torch.stack((offsets[:, :, :, i, :, 0] / w, offsets[:, :, :, i, :, 1] / h), -1)
             for i, (h, w) in enumerate(fed)], dim=3,
        )
        locations = reference_points[:, :, None, :, None, :] + scaled
        if len(spatial_shapes) != lv:
            if len(spatial_shapes) != 1:
                raise ValueError(f"built for {lv} levels, fed {len(spatial_shapes)}")
            locations, weights = msda.fold_levels_like_official_kernel(locations, weights)
        if self.impl == "torch":
            out = msda.ms_deform_attn_ref(value, spatial_shapes, locations, weights)
        else:
            out = msda.ms_deform_attn(value, spatial_shapes, locations, weights, impl=self.impl)
        return self.output_proj(out)


class EncoderLayer(nn.Module):
    """Post-norm: x = LN1(x + MSDA(x + pos)); x = LN2(x + W2 ReLU(W1 x))."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int, impl: KernelImpl):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes):
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class _Layers(nn.Module):
    """Holds ``layers.{i}`` so state-dict keys read ``encoder.layers.{i}.*`` as upstream."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


def reference_points(spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Pixel centres of every level normalised by (W, H): (1, S, 1, 2) as (x, y)."""
    refs = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
    return torch.cat(refs, 0)[None, :, None, :]


class DeformableEncoder(nn.Module):
    """``MSDeformAttnTransformerEncoderOnly``: level embeddings + a stack of ``EncoderLayer``."""

    def __init__(self, *, d_model: int, n_heads: int, n_layers: int, d_ffn: int, n_levels: int,
                 n_points: int, impl: KernelImpl = "torch"):
        super().__init__()
        self.level_embed = nn.Parameter(torch.zeros(n_levels, d_model))
        self.encoder = _Layers(
            [EncoderLayer(d_model, d_ffn, n_levels, n_heads, n_points, impl) for _ in range(n_layers)]
        )

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]) -> torch.Tensor:
        """srcs/pos_embeds: levels of (B, C, H_l, W_l) → (B, sum H_l*W_l, C)."""
        shapes = [(s.shape[2], s.shape[3]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1) for i, p in enumerate(pos_embeds)], 1
        )
        refs = reference_points(shapes, src.device)
        for layer in self.encoder.layers:
            src = layer(src, pos, refs, shapes)
        return src
