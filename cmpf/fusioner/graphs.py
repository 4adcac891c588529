"""Fusioner export wrappers: flat named-tensor I/O around the model's own methods, and their specs.

Three graphs (a runtime chains them; the sliding window and the prediction rule stay outside):
- ``fusioner_visual_encoder``: one normalised window per batch item → unit patch tokens;
- ``fusioner_text_encoder``: the 32 template prompts of one class name → its unit class embedding;
- ``fusioner_fusion_decoder``: patch tokens + K class embeddings → mask logits of the window.
Each wrapper's ``forward`` takes its ``GraphSpec`` inputs in order and returns its outputs in order.
Per-class inference calls the fusion graph with ``num_classes = 1``, once per class.
"""

from __future__ import annotations

from torch import nn

from cmpf.fusioner.config import FusionerConfig
from cmpf.fusioner.model import Fusioner
from cmpf.fusioner.prompts import CONTEXT_LENGTH, TEMPLATES
from cmpf.spec import GraphSpec, TensorSpec

VISUAL_ENCODER = "fusioner_visual_encoder"
TEXT_ENCODER = "fusioner_text_encoder"
FUSION_DECODER = "fusioner_fusion_decoder"
GRAPH_NAMES = (VISUAL_ENCODER, TEXT_ENCODER, FUSION_DECODER)


class VisualEncoder(nn.Module):
    def __init__(self, model: Fusioner):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.encode_image(pixel_values)


class TextEncoder(nn.Module):
    def __init__(self, model: Fusioner):
        super().__init__()
        self.model = model

    def forward(self, template_token_ids):
        return self.model.encode_class(template_token_ids)


class FusionDecoder(nn.Module):
    def __init__(self, model: Fusioner):
        super().__init__()
        self.model = model

    def forward(self, image_tokens, text_embeddings):
        return self.model.segment_window(image_tokens, text_embeddings)


WRAPPERS = {VISUAL_ENCODER: VisualEncoder, TEXT_ENCODER: TextEncoder, FUSION_DECODER: FusionDecoder}


def graph_specs(cfg: FusionerConfig) -> dict[str, GraphSpec]:
    """Names, dims and dtypes of the three graphs (``batch`` and ``num_classes`` are dynamic)."""
    s, n, d = cfg.window_size, cfg.num_patches, cfg.clip_embed_dim
    tokens = TensorSpec("image_tokens", ("batch", n, d))
    return {
        VISUAL_ENCODER: GraphSpec(VISUAL_ENCODER, (TensorSpec("pixel_values", ("batch", 3, s, s)),), (tokens,)),
        TEXT_ENCODER: GraphSpec(
            TEXT_ENCODER, (TensorSpec("template_token_ids", (len(TEMPLATES), CONTEXT_LENGTH), "int64"),),
            (TensorSpec("class_embedding", (1, d)),),
        ),
        FUSION_DECODER: GraphSpec(
            FUSION_DECODER, (tokens, TensorSpec("text_embeddings", ("num_classes", d))),
            (TensorSpec("mask_logits", ("batch", "num_classes", s, s)),),
        ),
    }
