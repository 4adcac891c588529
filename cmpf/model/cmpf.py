"""CMPF / FC-CLIP composition: frozen CLIP + frozen SAM + pixel decoder + masked decoder + ensemble.

``CMPF.forward`` follows the deployed pipeline's order (DESIGN.md §1): encode the CLIP and SAM
copies of the image, decode, classify the masks with the frozen CLIP head, ensemble. Each step is
a method so the export wrappers call exactly this code. Module names follow the official
detectron2 state-dict keys (``backbone.clip_model``, ``sam``, ``sem_seg_head``, ``void_embedding``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cmpf.config import InferenceOptions, ModelConfig, default_options
from cmpf.ensemble import geometric_ensemble, valid_mask_weights
from cmpf.model.clip_backbone import ClipBackbone
from cmpf.model.decoder import MaskedDecoder, Prediction
from cmpf.model.pixel_decoder import PixelDecoder
from cmpf.text import TextClassifier, classification_logits, encode_vocabulary


@dataclass
class ModelOutputs:
    """Everything the post-processing and the parity checks need, batch-first."""

    pred_logits: torch.Tensor  # (B, Q, K+1) final in-vocabulary logits
    pred_masks: torch.Tensor  # (B, Q, H/4, W/4) final mask logits
    out_vocab_logits: torch.Tensor  # (B, Q, K+1)
    mask_cls_logprob: torch.Tensor  # (B, Q, K+1) ensembled log-probabilities, void last
    aux: list[Prediction]  # the 9 earlier predictions (initial queries first)
    sam_embedding: Optional[torch.Tensor]  # (B, C, 64, 64)


class SemSegHead(nn.Module):
    """Container giving the ``sem_seg_head.{pixel_decoder,predictor}`` key prefixes."""

    def __init__(self, pixel_decoder: PixelDecoder, predictor: MaskedDecoder):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor


class CMPF(nn.Module):
    def __init__(self, cfg: ModelConfig, *, backbone: ClipBackbone, sam: Optional[nn.Module],
                 pixel_decoder: PixelDecoder, predictor: MaskedDecoder):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.sam = sam
        self.sem_seg_head = SemSegHead(pixel_decoder, predictor)
        self.void_embedding = nn.Embedding(1, backbone.embed_dim)

    # -- the graphs ---------------------------------------------------------------------------
    def encode_clip(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) CLIP-normalised, /32-padded → res2..res5."""
        return self.backbone(pixels)

    @torch.no_grad()
    def encode_sam(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, 1024, 1024) SAM-normalised → SAM neck (B, C, 64, 64)."""
        self.sam.eval()
        return self.sam.image_encoder(pixels)

    def void(self) -> torch.Tensor:
        return F.normalize(self.void_embedding.weight, dim=-1)

    def decode(self, feats: dict[str, torch.Tensor], sam_embedding: Optional[torch.Tensor],
               text: TextClassifier) -> list[Prediction]:
        """Pixel decoder + masked decoder → 1 + num_layers predictions (last = final)."""
        head = self.sem_seg_head
        mask_features, multi_scale, sam_fpn = head.pixel_decoder(feats, sam_embedding)
        return head.predictor(multi_scale, mask_features, text, self.void(), sam_embedding, sam_fpn)

    @torch.no_grad()
    def classify_masks(self, res5: torch.Tensor, pred_masks: torch.Tensor,
                       text: TextClassifier) -> torch.Tensor:
        """Out-of-vocabulary logits (B, Q, K+1) from the frozen CLIP head on mask-pooled res5."""
        masks = F.interpolate(pred_masks, size=res5.shape[-2:], mode="bilinear", align_corners=False)
        pooled = self.backbone.classify_masks(res5, masks)
        return classification_logits(pooled, text.embeddings, text.synonym_mask, self.void(),
                                     self.backbone.logit_scale)

    @staticmethod
    def ensemble(in_logits: torch.Tensor, out_logits: torch.Tensor, pred_masks: torch.Tensor,
                 seen: torch.Tensor, res5_size: tuple[int, int], options: InferenceOptions) -> torch.Tensor:
        alpha, beta = options.ensemble_alpha, options.ensemble_beta
        if options.ensemble_on_valid_mask:
            alpha, beta = valid_mask_weights(pred_masks, res5_size, alpha, beta)
        return geometric_ensemble(in_logits, out_logits, seen.to(in_logits), alpha, beta)

    # -- end to end ---------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, clip_pixels: torch.Tensor, sam_pixels: Optional[torch.Tensor],
                text: TextClassifier, seen: torch.Tensor,
                options: Optional[InferenceOptions] = None) -> ModelOutputs:
        """clip_pixels (B, 3, H, W), sam_pixels (B, 3, 1024, 1024) or None, seen (K,) → outputs.

        ``options``: the ensemble weights (default: the preset's ``default_options``).
        """
        options = options or default_options(self.cfg)
        feats = self.encode_clip(clip_pixels)
        sam_embedding = self.encode_sam(sam_pixels) if self.sam is not None else None
        predictions = self.decode(feats, sam_embedding, text)
        final = predictions[-1]
        out_logits = self.classify_masks(feats["res5"], final.masks, text)
        logprob = self.ensemble(final.logits, out_logits, final.masks, seen, feats["res5"].shape[-2:], options)
        return ModelOutputs(final.logits, final.masks, out_logits, logprob, predictions[:-1], sam_embedding)

    def forward_train(self, images: torch.Tensor, text: TextClassifier) -> dict:
        """Training forward on LSJ crops (B, 3, S, S) RGB 0-255 → Mask2Former-style output dict."""
        from cmpf.preprocess import normalize_clip, normalize_sam

        feats = self.encode_clip(normalize_clip(images))
        sam_embedding = None
        if self.sam is not None:
            sam_pixels = normalize_sam(images)
            size = self.cfg.sam_input_size
            if sam_pixels.shape[-2:] != (size, size):  # official LSJ crops are already 1024²
                sam_pixels = F.interpolate(sam_pixels, size=(size, size), mode="bilinear", align_corners=False)
            sam_embedding = self.encode_sam(sam_pixels)
        predictions = self.decode(feats, sam_embedding, text)
        as_dict = lambda p: {"pred_logits": p.logits, "pred_masks": p.masks}  # noqa: E731
        return {**as_dict(predictions[-1]), "aux_outputs": [as_dict(p) for p in predictions[:-1]]}

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters()
                if n.startswith(("sem_seg_head.", "void_embedding."))]

    def train(self, mode: bool = True) -> "CMPF":
        super().train(mode)
        if self.sam is not None:
            self.sam.eval()  # frozen
        return self

    @torch.no_grad()
    def text_classifier_for(self, vocabulary, batch_size: int = 128) -> TextClassifier:
        """Encode a ``Vocabulary`` with the frozen CLIP text tower (14 templates per synonym)."""
        return encode_vocabulary(vocabulary, self.backbone.encode_text, batch_size, self.void_embedding.weight.device)

