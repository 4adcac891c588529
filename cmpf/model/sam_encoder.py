"""Frozen SAM (segment-anything) built from explicit arguments; only the image encoder runs per image.

The image encoder consumes SAM-normalised pixels warped to (B, 3, 1024, 1024) and produces the neck
output (B, 256, 64, 64). The prompt encoder and mask decoder are kept (their weights are in the
official checkpoints) for the optional SAM mask ensemble. Module names follow ``sam.*`` keys.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from cmpf.config import SAM_PIXEL_MEAN, SAM_PIXEL_STD, SamConfig


def build_sam(cfg: SamConfig) -> Sam:
    """Build SAM exactly as ``segment_anything.build_sam._build_sam`` does, from a ``SamConfig``."""
    grid = cfg.img_size // cfg.patch_size
    image_encoder = ImageEncoderViT(
        depth=cfg.depth,
        embed_dim=cfg.embed_dim,
        img_size=cfg.img_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=cfg.num_heads,
        patch_size=cfg.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=cfg.global_attn_indexes,
        window_size=cfg.window_size,
        out_chans=cfg.out_chans,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=cfg.out_chans,
        image_embedding_size=(grid, grid),
        input_image_size=(cfg.img_size, cfg.img_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=cfg.out_chans, mlp_dim=2048, num_heads=8),
        transformer_dim=cfg.out_chans,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    sam = Sam(
        image_encoder=image_encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )
    for p in sam.parameters():
        p.requires_grad_(False)
    return sam.eval()
