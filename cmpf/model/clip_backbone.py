"""Frozen open_clip CLIP: multi-scale image features, the dense CLIP head and the text tower.

Consumes CLIP-normalised, /32-padded pixels (B, 3, H, W); produces res2..res5 (strides 4..32) and,
for masks pooled on res5, CLIP embeddings (B, Q, D). The text tower turns token ids (P, 77) into
un-normalised embeddings (P, D). Module names follow the official ``backbone.clip_model.*`` keys.
"""

from __future__ import annotations

import math

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

from cmpf.kernels.mask_pooling import mask_pooling_ref

# Small towers with the official code paths, for tests (random weights, fast on CPU).
TINY_CLIP_CONFIGS = {
    "tiny-convnext": {
        "embed_dim": 64,
        "vision_cfg": {
            "timm_model_name": "convnext_atto",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "mlp",
            "timm_drop": 0.0,
            "timm_drop_path": 0.0,
            "image_size": 64,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "tiny-rn": {
        "embed_dim": 64,
        "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "image_size": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}


def build_clip_model(name: str, quick_gelu: bool) -> CLIP:
    """Build the open_clip CLIP architecture (random init; weights come from a checkpoint)."""
    cfg = TINY_CLIP_CONFIGS.get(name) or open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown CLIP architecture {name!r}")
    return CLIP(
        embed_dim=cfg["embed_dim"],
        vision_cfg=cfg["vision_cfg"],
        text_cfg=cfg["text_cfg"],
        quick_gelu=quick_gelu,
    )


class ClipBackbone(nn.Module):
    """Frozen CLIP wrapper (``FZ:frozenseg/modeling/backbone/clip.py``), always in eval mode."""

    def __init__(self, clip_model: CLIP, arch: str):
        super().__init__()
        self.clip_model = clip_model
        self.arch = arch
        for p in self.clip_model.parameters():
            p.requires_grad_(False)
        self.clip_model.eval()

    def train(self, mode: bool = True) -> "ClipBackbone":
        return super().train(False)  # frozen: BatchNorm (RN) and dropout stay in eval mode

    @property
    def embed_dim(self) -> int:
        return self.clip_model.text_projection.shape[-1]

    @property
    def channels(self) -> dict[str, int]:
        """Channels of res2..res5."""
        visual = self.clip_model.visual
        if self.arch == "convnext":
            dims = [stage.blocks[-1].conv_dw.out_channels for stage in visual.trunk.stages]
        else:
            dims = [layer[-1].conv3.out_channels for layer in
                    (visual.layer1, visual.layer2, visual.layer3, visual.layer4)]
        return {f"res{i + 2}": d for i, d in enumerate(dims)}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) normalised pixels → {"res2": (B, C2, H/4, W/4), ..., "res5": (B, C5, H/32, W/32)}."""
        visual = self.clip_model.visual
        out = {}
        if self.arch == "convnext":
            x = visual.trunk.stem(x)
            for i, stage in enumerate(visual.trunk.stages):
                x = stage(x)
                out[f"res{i + 2}"] = x
            # clip_vis_dense = trunk.norm_pre(res5); norm_pre is Identity for ConvNeXt
            out["res5"] = visual.trunk.norm_pre(x)
        else:
            x = visual.act1(visual.bn1(visual.conv1(x)))
            x = visual.act2(visual.bn2(visual.conv2(x)))
            x = visual.act3(visual.bn3(visual.conv3(x)))
            x = visual.avgpool(x)
            for i, layer in enumerate((visual.layer1, visual.layer2, visual.layer3, visual.layer4)):
                x = layer(x)
                out[f"res{i + 2}"] = x
        return out

    @torch.no_grad()
    def classify_masks(self, res5: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """Dense CLIP embeddings of masked regions.

        Args:
            res5: (B, C5, h, w) CLIP stride-32 features (``clip_vis_dense``).
            mask_logits: (B, Q, h, w) mask logits already resized to (h, w).
        Returns:
            (B, Q, D) un-normalised CLIP image embeddings (NaN rows for empty masks with RN CLIP,
            as upstream; the ensemble handles them with ``ensemble_on_valid_mask``).
        """
        if self.arch == "convnext":
            pooled = mask_pooling_ref(res5, mask_logits)  # (B, Q, C5)
            b, q, c = pooled.shape
            x = self.clip_model.visual.trunk.head(pooled.reshape(b * q, c, 1, 1))
            x = self.clip_model.visual.head(x)
            return x.view(b, q, -1)
        return self._masked_attention_pool(res5, mask_logits)

    def _masked_attention_pool(self, x: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """RN attention pool with one query per mask; keys outside the mask are blocked."""
        pool = self.clip_model.visual.attnpool
        b, c, h, w = x.shape
        q_count = mask_logits.shape[1]
        heads = pool.num_heads
        pos = pool.positional_embedding.to(x.dtype)  # (1 + S*S, C)
        side = int(math.sqrt(pos.shape[0] - 1))
        spatial = pos[1:].t().reshape(1, c, side, side)
        spatial = F.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=False)
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        key_value = tokens + spatial.flatten(2).transpose(1, 2)
        query = (tokens.mean(1, keepdim=True) + pos[:1]).expand(b, q_count, c)
        blocked = (mask_logits > 0).flatten(2) == 0  # (B, Q, HW)
        q = F.linear(query, pool.q_proj.weight, pool.q_proj.bias)
        k = F.linear(key_value, pool.k_proj.weight, pool.k_proj.bias)
        v = F.linear(key_value, pool.v_proj.weight, pool.v_proj.bias)
        dh = c // heads
        q = q.view(b, q_count, heads, dh).transpose(1, 2)
        k = k.view(b, h * w, heads, dh).transpose(1, 2)
        v = v.view(b, h * w, heads, dh).transpose(1, 2)
        scores = torch.matmul(q * (1.0 / math.sqrt(dh)), k.transpose(-2, -1))
        scores = scores.masked_fill(blocked[:, None], float("-inf"))
        out = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, q_count, c)
        return F.linear(out, pool.c_proj.weight, pool.c_proj.bias)

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(P, 77) int64 token ids → (P, D) un-normalised text embeddings (EOT token, projected)."""
        m = self.clip_model
        x = m.token_embedding(tokens) + m.positional_embedding
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return x @ m.text_projection

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip_model.logit_scale
