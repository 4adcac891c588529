"""Reference PyTorch CMPF / FC-CLIP: ``build_model(preset | ModelConfig, checkpoint=...)``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cmpf.config import ModelConfig, get_config
from cmpf.model.checkpoint import CheckpointError, LoadReport, load_checkpoints
from cmpf.model.clip_backbone import ClipBackbone, build_clip_model
from cmpf.model.cmpf import CMPF, ModelOutputs
from cmpf.model.decoder import MaskedDecoder
from cmpf.model.pixel_decoder import PixelDecoder
from cmpf.model.sam_encoder import build_sam


def build_model(
    preset: str | ModelConfig,
    checkpoint: Optional[str | Path] = None,
    clip_weights: Optional[str | Path] = None,
    sam_weights: Optional[str | Path] = None,
    *,
    strict: bool = True,
) -> CMPF:
    """Build a model in eval mode; random init without files (tests, the ``tiny`` preset).

    With any weight file, every parameter group the model needs (clip, sam, head, void) must be
    provided by some file, else ``CheckpointError`` (``strict=False`` keeps random tensors).
    The load report is kept as ``model.load_report``.
    """
    cfg = get_config(preset)
    backbone = ClipBackbone(build_clip_model(cfg.clip_model, cfg.clip_quick_gelu), cfg.clip_arch)
    sam = build_sam(cfg.sam) if cfg.has_sam else None
    pixel_decoder = PixelDecoder(
        in_channels=backbone.channels, conv_dim=cfg.hidden_dim, n_heads=cfg.num_heads,
        enc_layers=cfg.enc_layers, enc_ffn=cfg.enc_dim_feedforward, n_points=cfg.enc_points,
        with_sam=cfg.has_sam, deform_impl=cfg.deform_attn_impl,
    )
    predictor = MaskedDecoder(
        hidden_dim=cfg.hidden_dim, num_queries=cfg.num_queries, num_heads=cfg.num_heads,
        dim_feedforward=cfg.dim_feedforward, num_layers=cfg.dec_layers, embed_dim=backbone.embed_dim,
        with_sam=cfg.has_sam, attention_impl=cfg.attention_impl, mask_pooling_impl=cfg.mask_pooling_impl,
    )
    model = CMPF(cfg, backbone=backbone, sam=sam, pixel_decoder=pixel_decoder, predictor=predictor)
    model.load_report = None
    if checkpoint is not None or clip_weights is not None or sam_weights is not None:
        try:
            model.load_report = load_checkpoints(model, checkpoint, clip_weights, sam_weights)
        except CheckpointError:
            if strict:
                raise
    return model.eval()


__all__ = ["build_model", "CMPF", "ModelOutputs", "CheckpointError", "LoadReport", "ModelConfig"]
