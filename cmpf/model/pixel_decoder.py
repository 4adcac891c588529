"""Pixel decoder (``MSDeformAttnPixelDecoder``): CLIP branch and, for CMPF, the SAM branch.

Consumes res2..res5 (strides 4..32) and the SAM neck (B, C, 64, 64); produces
``mask_features`` (B, C, H/4, W/4), ``multi_scale`` [stride 32, 16, 8] maps of C channels and
``sam_fpn`` (B, C, 32, 32) (None for FC-CLIP). Key names follow ``sem_seg_head.pixel_decoder.*``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cmpf.config import KernelImpl
from cmpf.model.msdeform import DeformableEncoder
from cmpf.model.position import sine_position_encoding


class ConvNorm(nn.Conv2d):
    """detectron2 ``Conv2d``: a convolution with a ``norm`` child and an optional ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int = 0, relu: bool = False):
        super().__init__(cin, cout, kernel_size, padding=padding, bias=False)
        self.norm = nn.GroupNorm(32, cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class PixelDecoder(nn.Module):
    def __init__(self, *, in_channels: dict[str, int], conv_dim: int, n_heads: int, enc_layers: int,
                 enc_ffn: int, n_points: int, with_sam: bool, deform_impl: KernelImpl = "torch"):
        super().__init__()
        # input_proj[k]: k = 0 takes res5, 1 res4, 2 res3
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[f], conv_dim, 1), nn.GroupNorm(32, conv_dim))
            for f in ("res5", "res4", "res3")
        )
        enc = dict(d_model=conv_dim, n_heads=n_heads, n_layers=enc_layers, d_ffn=enc_ffn,
                   n_levels=3, n_points=n_points, impl=deform_impl)
        self.transformer = DeformableEncoder(**enc)
        self.mask_features = nn.Conv2d(conv_dim, conv_dim, 1)
        self.adapter_1 = ConvNorm(in_channels["res2"], conv_dim, 1)
        self.layer_1 = ConvNorm(conv_dim, conv_dim, 3, padding=1, relu=True)
        self.pos_feats = conv_dim // 2
        if with_sam:
            # built for 3 levels, fed 1 (MODEL_SPEC.md §4.3)
            self.sam_transformer = DeformableEncoder(**enc)
            self.fpn3 = nn.Sequential(
                nn.Conv2d(conv_dim, conv_dim, 3, stride=2, padding=1), nn.GroupNorm(32, conv_dim), nn.ReLU()
            )

    @property
    def with_sam(self) -> bool:
        return hasattr(self, "sam_transformer")

    def forward(
        self, feats: dict[str, torch.Tensor], sam_neck: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor], Optional[torch.Tensor]]:
        # CLIP features arrive channels-last-strided; PyTorch's CPU GroupNorm on channels-last maps
        # accumulates its statistics ~35x less accurately than on NCHW (~2e-6 vs 5e-8 per norm, which the
        # masked-attention decoder amplifies to ~4e-4), so normalise the layout first (a no-op in exports).
        feats = {f: feats[f].float().contiguous() for f in ("res2", "res3", "res4", "res5")}
        names = ("res5", "res4", "res3")
        srcs = [proj(feats[f]) for proj, f in zip(self.input_proj, names)]
        pos = [sine_position_encoding(feats[f], self.pos_feats) for f in names]
        y = self.transformer(srcs, pos)
        b = y.shape[0]
        out, start = [], 0
        for s in srcs:
            h, w = s.shape[-2:]
            out.append(y[:, start:start + h * w].transpose(1, 2).reshape(b, -1, h, w))
            start = start + h * w
        lateral = self.adapter_1(feats["res2"])
        fused = lateral + F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        out.append(self.layer_1(fused))
        multi_scale = out[:3]  # strides 32, 16, 8
        mask_features = self.mask_features(out[-1])
        sam_fpn = None
        if self.with_sam:
            if sam_neck is None:
                raise ValueError("this model has a SAM branch: sam_embedding is required")
            s = self.fpn3(sam_neck.float())
            z = self.sam_transformer([s], [sine_position_encoding(s, self.pos_feats)])
            sam_fpn = z.transpose(1, 2).reshape(b, -1, s.shape[-2], s.shape[-1])
        return mask_features, multi_scale, sam_fpn
