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

from cmpf.config import ModelConfig, SamConfig
from cmpf.spec import GraphSpec, TensorSpec

GRAPH_NAME = "sam_mask_decoder"
NUM_MULTIMASK = 3  # SAM's multimask output: three masks per prompt
LOW_RES_FACTOR = 4  # the mask decoder upsamples the embedding grid 4× (64 → 256 for ViT-B)


def sam_mask_decoder_spec(cfg: ModelConfig | SamConfig) -> GraphSpec:
    """Names, dims and dtypes of the ``sam_mask_decoder`` graph for a model (or its SAM) config.

    Inputs: ``sam_embedding`` (1, C, g, g) float32; ``point_coords`` (num_points, 1, 2) float32, XY
    pixels in the S × S SAM input frame; ``point_labels`` (num_points, 1) float32 (1 = foreground,
    0 = background, -1 = ignored, SAM's convention). Outputs: ``mask_logits``
    (num_points, 3, 4g, 4g) float32 low-resolution logits; ``iou_predictions`` (num_points, 3) float32.
    """
    sam = cfg.sam if isinstance(cfg, ModelConfig) else cfg
    if sam is None:
        raise ValueError(f"model {cfg.name!r} has no SAM, so no {GRAPH_NAME} graph")
    g = sam.img_size // sam.patch_size
    low = LOW_RES_FACTOR * g
    return GraphSpec(
        GRAPH_NAME,
        (TensorSpec("sam_embedding", (1, sam.out_chans, g, g)),
         TensorSpec("point_coords", ("num_points", 1, 2)),
         TensorSpec("point_labels", ("num_points", 1))),
        (TensorSpec("mask_logits", ("num_points", NUM_MULTIMASK, low, low)),
         TensorSpec("iou_predictions", ("num_points", NUM_MULTIMASK))),
    )


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
