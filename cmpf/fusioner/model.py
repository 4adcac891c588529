"""Fusioner in plain PyTorch: frozen open_clip CLIP towers + fusion transformer + conv decoder + cosine head.

Consumes one normalised window (B, 3, S, S) (S = 224) and K class embeddings (K, D); produces mask
logits (B, K, S, S). Each graph is a method (``encode_image``, ``encode_class``, ``segment_window``)
so the export wrappers call exactly this code. Module names give the official state-dict keys
(``text_model.*``, ``img_model.*``, ``fusion.*``, ``decoder.*``; ``FU:model/full_model.py``), and the
towers are open_clip's own modules, so the CLIP keys are OpenAI's (``img_model.X`` = ``visual.X``).
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

from cmpf.fusioner.config import FusionerConfig

# Small towers with the official code paths, for tests (random weights, fast on CPU).
TINY_CLIP_CONFIGS = {
    "tiny-vit": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}


def build_clip(cfg: FusionerConfig) -> CLIP:
    """The open_clip CLIP architecture of ``cfg.clip_model`` (random init, nothing downloaded)."""
    clip_cfg = TINY_CLIP_CONFIGS.get(cfg.clip_model) or open_clip.get_model_config(cfg.clip_model)
    if clip_cfg is None:
        raise ValueError(f"unknown CLIP architecture {cfg.clip_model!r}")
    if clip_cfg["embed_dim"] != cfg.clip_embed_dim or clip_cfg["vision_cfg"]["patch_size"] != cfg.clip_patch_size:
        raise ValueError(f"{cfg.name}: clip_embed_dim / clip_patch_size do not match CLIP {cfg.clip_model!r}")
    if clip_cfg["vision_cfg"]["image_size"] != cfg.window_size:
        raise ValueError(f"{cfg.name}: window_size must equal the CLIP image size of {cfg.clip_model!r}")
    # ``quick_gelu`` must come from the config: ViT-L-14 with nn.GELU is the wrong architecture
    return CLIP(clip_cfg["embed_dim"], clip_cfg["vision_cfg"], clip_cfg["text_cfg"],
                quick_gelu=clip_cfg.get("quick_gelu", False))


class ClipTextTower(nn.Module):
    """The CLIP text tower (``FU:model/text_encoder.py::ClipText``); keys = OpenAI's non-``visual.`` keys."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.positional_embedding = clip.positional_embedding
        self.text_projection = clip.text_projection
        self.logit_scale = clip.logit_scale  # in the state dict, never used
        self.transformer = clip.transformer
        self.token_embedding = clip.token_embedding
        self.ln_final = clip.ln_final

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(P, 77) int64 token ids → (P, D) un-normalised embeddings (the EOT token, projected)."""
        x = self.token_embedding(token_ids) + self.positional_embedding
        n = x.shape[1]
        # causal mask, -inf above the diagonal; built here, not kept as a buffer (not in the state dict)
        causal = torch.full((n, n), float("-inf"), dtype=x.dtype, device=x.device).triu_(1)
        x = self.transformer(x, attn_mask=causal)
        x = self.ln_final(x)
        # EOT (49407) is the largest id, so argmax finds it (``CL:clip/model.py::encode_text``)
        x = x[torch.arange(x.shape[0], device=x.device), token_ids.argmax(dim=-1)]
        return x @ self.text_projection


class Attention(nn.Module):
    """Unmasked multi-head self-attention with a fused qkv (``FU:utils/model_utils.py:28-66``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) → (B, L, C)."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # exact erf GELU (not CLIP's QuickGELU)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block; dropout and drop-path are 0 in the official config, so absent here."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = FeedForward(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Fusion(nn.Module):
    """Early fusion: one transformer over [N visual tokens ; K text tokens] (``FU:model/fusion.py``).

    No positional encoding; ``cls_emb`` is added to every text token (a modality embedding), so the
    module is permutation-equivariant over classes, and every class affects every other.
    """

    def __init__(self, *, visual_dim: int, text_dim: int, width: int, layers: int, heads: int, mlp_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList([Block(width, heads, mlp_dim) for _ in range(layers)])
        self.cls_emb = nn.Parameter(torch.randn(1, width))
        self.visual_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width))
        self.proj_patch = nn.Parameter(width**-0.5 * torch.randn(width, width))
        self.proj_classes = nn.Parameter(width**-0.5 * torch.randn(width, width))
        self.norm = nn.LayerNorm(width)

    def forward(self, visual: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """visual (B, N, Dv) unit-norm tokens, text (B, K, Dt) → patches (B, N, C), classes (B, K, C)."""
        n = visual.shape[1]
        x = torch.cat((self.visual_proj(visual), self.text_proj(text) + self.cls_emb), dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, :n] @ self.proj_patch, x[:, n:] @ self.proj_classes


class Decoder(nn.Module):
    """4 × [conv3×3 → InstanceNorm → ReLU], bilinear ×2 after the first three, conv1×1, bilinear to S.

    ``FU:model/decoder.py``. The InstanceNorms have no affine and no running stats (no state-dict
    entries); every interpolation is bilinear with align_corners=False.
    """

    def __init__(self, channels: int, grid_size: int, out_size: int):
        super().__init__()
        self.grid_size = grid_size
        self.out_size = out_size
        self.conv_0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_4 = nn.Conv2d(channels, channels, 1)
        self.norm_0 = nn.InstanceNorm2d(channels)
        self.norm_1 = nn.InstanceNorm2d(channels)
        self.norm_2 = nn.InstanceNorm2d(channels)
        self.norm_3 = nn.InstanceNorm2d(channels)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, g*g, C) patch tokens (row-major grid) → (B, C, S, S) pixel features."""
        b, _, c = patches.shape
        g = self.grid_size
        x = patches.transpose(1, 2).reshape(b, c, g, g)  # 'b (wo ho) c -> b c wo ho'
        stages = ((self.conv_0, self.norm_0), (self.conv_1, self.norm_1), (self.conv_2, self.norm_2),
                  (self.conv_3, self.norm_3))
        for i, (conv, norm) in enumerate(stages):
            x = F.relu(norm(conv(x)))
            if i < 3:
                x = F.interpolate(x, size=(g * 2 ** (i + 1),) * 2, mode="bilinear", align_corners=False)
        x = self.conv_4(x)
        return F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)


def cosine_head(features: torch.Tensor, classes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-pixel cosine similarity / temperature (``FU:model/head.py``; no epsilon, as upstream).

    Args:
        features: (B, C, H, W) pixel features.
        classes: (B, K, C) class vectors.
    Returns:
        (B, K, H, W) logits in [-1/temperature, 1/temperature].
    """
    b, c, h, w = features.shape
    pixels = features.flatten(2).transpose(1, 2)  # (B, HW, C)
    pixels = pixels / pixels.norm(dim=-1, keepdim=True)
    classes = classes / classes.norm(dim=-1, keepdim=True)
    masks = pixels @ classes.transpose(1, 2)  # (B, HW, K)
    return masks.transpose(1, 2).reshape(b, -1, h, w) / temperature


class Fusioner(nn.Module):
    """The official ``FullModel`` (built in eval mode; it has no dropout or BatchNorm, so modes agree)."""

    def __init__(self, cfg: FusionerConfig, clip: CLIP):
        super().__init__()
        self.cfg = cfg
        # attribute order = official key order: text_model, img_model, fusion, decoder
        self.text_model = ClipTextTower(clip)
        self.img_model = clip.visual
        self.fusion = Fusion(
            visual_dim=cfg.clip_embed_dim, text_dim=cfg.clip_embed_dim, width=cfg.fusion_width,
            layers=cfg.fusion_layers, heads=cfg.fusion_heads, mlp_dim=cfg.fusion_mlp_ratio * cfg.fusion_width,
        )
        self.decoder = Decoder(cfg.fusion_width, cfg.grid_size, cfg.window_size)
        # the CLIP towers are frozen (``FU:model/full_model.py``); fusion and decoder are the trainable parts
        self.text_model.requires_grad_(False)
        self.img_model.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.fusion.cls_emb.device

    # -- visual encoder graph -----------------------------------------------------------------
    def encode_image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised window → (B, N, D) last-layer patch tokens, ``ln_post`` then ``@ proj``.

        The CLS token is dropped; there is no positional-embedding interpolation, so S is fixed.
        """
        s = self.cfg.window_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, s, s):
            raise ValueError(f"the CLIP image tower takes (B, 3, {s}, {s}) windows, got {tuple(pixels.shape)}")
        v = self.img_model
        x = v.conv1(pixels)  # (B, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # row-major grid, as 'b c w h -> b (w h) c'
        x = torch.cat([v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        x = v.ln_pre(x + v.positional_embedding.to(x.dtype))
        x = v.transformer(x)
        return v.ln_post(x[:, 1:]) @ v.proj

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised window → (B, N, D) L2-normalised patch tokens (fusion input)."""
        x = self.encode_image_tokens(pixels)
        return x / x.norm(dim=-1, keepdim=True)

    # -- text encoder graph -------------------------------------------------------------------
    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(P, 77) int64 prompt tokens → (P, D) un-normalised CLIP text embeddings."""
        return self.text_model(token_ids)

    def encode_class(self, template_token_ids: torch.Tensor) -> torch.Tensor:
        """(T, 77) tokens of the T templates of one class name → (1, D) unit class embedding.

        Each template embedding is L2-normalised, the T are averaged, and the mean is normalised
        again (``FU:model/text_encoder.py::get_embed``).
        """
        x = self.encode_text(template_token_ids)
        x = x / x.norm(dim=-1, keepdim=True)
        x = x.mean(dim=0, keepdim=True)
        return x / x.norm(dim=-1, keepdim=True)

    # -- fusion + decoder + head graph ------------------------------------------------------------
    def fuse(self, image_tokens: torch.Tensor, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image_tokens (B, N, D) unit-norm, text_embeddings (K, D), K >= 1 → patches (B, N, C), classes (B, K, C)."""
        if text_embeddings.dim() != 2 or text_embeddings.shape[0] < 1:
            raise ValueError(f"text_embeddings must be (K, D) with K >= 1, got {tuple(text_embeddings.shape)}")
        text = text_embeddings.unsqueeze(0).expand(image_tokens.shape[0], -1, -1)  # the same classes for every image
        return self.fusion(image_tokens, text)

    def segment_window(self, image_tokens: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """image_tokens (B, N, D) unit-norm, text_embeddings (K, D) → mask logits (B, K, S, S)."""
        patches, classes = self.fuse(image_tokens, text_embeddings)
        return cosine_head(self.decoder(patches), classes, self.cfg.temperature)

    def forward(self, pixels: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """One window: (B, 3, S, S) normalised pixels, (K, D) class embeddings → (B, K, S, S) logits."""
        return self.segment_window(self.encode_image(pixels), text_embeddings)


def build_architecture(cfg: FusionerConfig) -> Fusioner:
    """The model with random weights (``cmpf.fusioner.build_model`` adds the checkpoint)."""
    return Fusioner(cfg, build_clip(cfg))
