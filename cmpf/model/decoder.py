"""Masked-attention transformer decoder with the Feature Injector and the Query Injector.

Consumes the pixel decoder's multi-scale maps [stride 32, 16, 8] (B, C, h_l, w_l), mask features
(B, C, H/4, W/4), the text classifier and (CMPF) the SAM neck (B, C, 64, 64) and SAM-branch map
(B, C, 32, 32); produces per prediction (initial queries + each of the 9 layers) in-vocabulary logits
(B, Q, K+1) and mask logits (B, Q, H/4, W/4). Key names follow ``sem_seg_head.predictor.*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cmpf.config import KernelImpl
from cmpf.kernels import mask_pooling as mpool
from cmpf.model.attention import MultiheadAttention
from cmpf.model.position import sine_position_encoding
from cmpf.text import classification_logits


@dataclass
class Prediction:
    logits: torch.Tensor  # (B, Q, K+1)
    masks: torch.Tensor  # (B, Q, H/4, W/4)


class AttentionLayer(nn.Module):
    """Post-norm attention block: x = LN(x + MHA(x + q_pos, mem + k_pos, mem)).

    ``attr`` is the official attribute name (``self_attn`` or ``multihead_attn``)."""

    def __init__(self, dim: int, heads: int, attr: str, impl: KernelImpl):
        super().__init__()
        self.attr = attr
        setattr(self, attr, MultiheadAttention(dim, heads, impl))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, memory, query_pos=None, key_pos=None, blocked=None):
        attn = getattr(self, self.attr)
        q = x if query_pos is None else x + query_pos
        k = memory if key_pos is None else memory + key_pos
        return self.norm(x + attn(q, k, memory, blocked))


class FFNLayer(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int, num_layers: int):
        super().__init__()
        dims = [dim_in] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [dim_out]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskedDecoder(nn.Module):
    def __init__(self, *, hidden_dim: int, num_queries: int, num_heads: int, dim_feedforward: int,
                 num_layers: int, embed_dim: int, with_sam: bool, attention_impl: KernelImpl = "torch",
                 mask_pooling_impl: KernelImpl = "torch"):
        super().__init__()
        self.num_layers = num_layers
        self.num_levels = 3
        self.with_sam = with_sam
        self.mask_pooling_impl = mask_pooling_impl
        attn = lambda name: AttentionLayer(hidden_dim, num_heads, name, attention_impl)  # noqa: E731
        self.transformer_self_attention_layers = nn.ModuleList(attn("self_attn") for _ in range(num_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(attn("multihead_attn") for _ in range(num_layers))
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward) for _ in range(num_layers))
        if with_sam:
            # Feature Injector at layers whose level is 0 (i = 0, 3, 6); Identity elsewhere (no keys)
            self.transformer_cross_attention_layers_sam = nn.ModuleList(
                attn("multihead_attn") if i % self.num_levels == 0 else nn.Identity() for i in range(num_layers)
            )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_levels, hidden_dim)
        self.mask_embed = MLP(hidden_dim, hidden_dim, hidden_dim, 3)
        self._mask_pooling_proj = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, hidden_dim))
        self.class_embed = MLP(hidden_dim, hidden_dim, embed_dim, 3)
        self.logit_scale = nn.Parameter(torch.tensor(2.659260036932778))  # ln(1/0.07)
        self.pos_feats = hidden_dim // 2

    def _pool(self, x: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        if self.mask_pooling_impl == "torch":
            return mpool.mask_pooling_ref(x, mask_logits)
        return mpool.mask_pooling(x, mask_logits, impl=self.mask_pooling_impl)

    def _tokens(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) → tokens + level embedding (B, hw, C) and sine positions (B, hw, C)."""
        src = x.flatten(2).transpose(1, 2) + self.level_embed.weight[level]
        pos = sine_position_encoding(x, self.pos_feats).flatten(2).transpose(1, 2)
        return src, pos

    def heads(self, output, mask_features, target_size, text, void, sam_neck):
        """Prediction heads (§5.3): logits, masks, the next attention mask, the SAM pooled queries."""
        d = self.decoder_norm(output)  # (B, Q, C)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(d), mask_features)
        pooled = self._mask_pooling_proj(self._pool(mask_features, masks))
        logits = classification_logits(self.class_embed(pooled + d), text.embeddings, text.synonym_mask,
                                       void, self.logit_scale)
        resized = F.interpolate(masks, size=target_size, mode="bilinear", align_corners=False)
        blocked = (resized.sigmoid().flatten(2) < 0.5).unsqueeze(1).detach()  # (B, 1, Q, hw)
        sam_pool = None
        if self.with_sam:
            # resized here rather than inside the pooling (which resizes only when the sizes differ):
            # the same bilinear resize, without a size comparison that would pin H/4 in exported graphs
            sam_masks = F.interpolate(masks, size=sam_neck.shape[-2:], mode="bilinear", align_corners=False)
            sam_pool = self._mask_pooling_proj(self._pool(sam_neck, sam_masks))
        return Prediction(logits, masks), blocked, sam_pool

    def forward(self, multi_scale, mask_features, text, void, sam_neck=None, sam_fpn=None) -> list[Prediction]:
        """Returns the 1 + num_layers predictions, the last one being the final output."""
        sizes = [f.shape[-2:] for f in multi_scale]
        src, pos = zip(*(self._tokens(f, i) for i, f in enumerate(multi_scale)))
        if self.with_sam:
            if not self.training:
                # test time only: SAM tokens resized onto the CLIP stride-32 grid (an exact identity when
                # the sizes match; unconditional so that exported graphs keep that grid symbolic)
                sam_fpn = F.interpolate(sam_fpn, size=sizes[0], mode="bilinear", align_corners=False)
            src_sam, pos_sam = self._tokens(sam_fpn, 0)
        b = mask_features.shape[0]
        query_embed = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)
        pred, blocked, sam_pool = self.heads(output, mask_features, sizes[0], text, void, sam_neck)
        predictions = [pred]
        for i in range(self.num_layers):
            level = i % self.num_levels
            memory, key_pos = src[level], pos[level]
            if self.with_sam and level == 0:
                # Feature Injector: CLIP stride-32 tokens attend to SAM tokens; replaces the memory,
                # and the masked cross-attention then gets no key positional encoding
                memory = self.transformer_cross_attention_layers_sam[i](src[0], src_sam, pos[0], pos_sam)
                key_pos = None
            output = self.transformer_cross_attention_layers[i](output, memory, query_embed, key_pos, blocked)
            output = self.transformer_self_attention_layers[i](output, output, query_embed, query_embed)
            output = self.transformer_ffn_layers[i](output)
            target = sizes[(i + 1) % self.num_levels]
            pred, blocked, next_sam_pool = self.heads(output, mask_features, target, text, void, sam_neck)
            predictions.append(pred)
            if self.with_sam and level == 2:
                output = output + next_sam_pool  # Query Injector, after recording the prediction
        return predictions
