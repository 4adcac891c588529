"""The ``sam_mask_decoder`` graph: SAM's prompt encoder + mask decoder on one image embedding.

Consumes the SAM neck output the pipeline already computes, ``sam_embedding`` (1, C, g, g) with
g = img_size / patch_size (64 for ViT-B), and a batch of N single-point prompts in the SAM input
frame (the S × S square the image encoder saw, S = 1024 for ViT-B); produces SAM's multimask
output: three low-resolution mask logits per point (N, 3, 4g, 4g) (256 × 256 for ViT-B) and their
predicted IoU (N, 3). This is ``SamPredictor.predict_torch(..., multimask_output=True)`` before
its upscaling, which ``cmpf.sam_masks`` does on every backend.

The wrapper calls segment-anything's own modules (no re-implemented logic); module names follow
the ``sam.prompt_encoder.*`` / ``sam.mask_decoder.*`` state-dict keys.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam
from torch import nn

from cmpf.config import ModelConfig
from cmpf.spec import GraphSpec, graph_specs

GRAPH_NAME = "sam_mask_decoder"


def sam_mask_decoder_spec(cfg: ModelConfig) -> GraphSpec:
    """The ``sam_mask_decoder`` spec of a model config (``cmpf.spec.graph_specs`` is its one home)."""
    if cfg.sam is None:
        raise ValueError(f"model {cfg.name!r} has no SAM, so no {GRAPH_NAME} graph")
    return graph_specs(cfg, {f"res{i}": 1 for i in (2, 3, 4, 5)}, 1)[GRAPH_NAME]


class SamMaskDecoder(nn.Module):
    """Flat tensor I/O around ``Sam.prompt_encoder`` + ``Sam.mask_decoder`` (multimask output).

    Shares the modules of ``sam`` (no copy); in eval mode, with SAM frozen.
    """

    def __init__(self, sam: Sam):
        super().__init__()
        self.prompt_encoder: PromptEncoder = sam.prompt_encoder
        self.mask_decoder: MaskDecoder = sam.mask_decoder

    @torch.no_grad()
    def forward(self, sam_embedding: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, C, g, g), (N, 1, 2), (N, 1) → mask logits (N, 3, 4g, 4g), IoU predictions (N, 3)."""
        sparse, dense = self.prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=None)
        mask_logits, iou_predictions = self.mask_decoder(
            image_embeddings=sam_embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        return mask_logits, iou_predictions
