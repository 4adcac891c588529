"""OpenSeg ensemble with SAM masks (MODEL_SPEC.md §7.2): the official ``geo_with_sam_inference``.

Consumes one image's model outputs (ensembled class log-probabilities and mask logits) and SAM mask
logits (``cmpf.sam_masks.SamMasks.logits``), classifies the SAM masks with the frozen CLIP head
(``classify_sam_masks``, through a mask-classifier callable), and adds the confident unseen-class
SAM masks into the semantic score map (``sam_semantic_ensemble``). Torch only; semantic output only.

Official quirks kept by default, for parity (``SamEnsembleOptions.pooling_pad``): the SAM logits are
resized with *nearest* interpolation straight to the CLIP stride-32 grid of the padded input (so
they stretch over the padding), then zero-padded to a multiple of 32 (detectron2 ``ImageList`` with
the model's size divisibility) before the mask pooling resizes them back bilinearly: the pooled
region is the mask squeezed toward the top-left CLIP cells. With RN CLIP the official code raises
``AttributeError`` there (``F.inteprolate`` typo); cmpf applies the ConvNeXt resize to both.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cmpf.config import SamEnsembleOptions

MaskClassifier = Callable[[torch.Tensor], torch.Tensor]  # (M, h32, w32) mask logits → (M, K+1) logits


@dataclass(frozen=True)
class SamSemanticInputs:
    """What the merge needs of one image's SAM masks: their logits at the original size (M, H0, W0),
    their out-of-vocabulary logits (M, K+1), the seen flags (K,) and the merge options."""

    logits: torch.Tensor
    cls_logits: torch.Tensor
    seen: torch.Tensor
    options: SamEnsembleOptions

    def merge(self, mask_cls: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """(Q, K+1) log-probs, (Q, H, W) query mask logits → (K, H, W) semantic scores."""
        sam_logits = resize_sam_logits(self.logits.to(mask_logits), tuple(mask_logits.shape[-2:]))
        return sam_semantic_ensemble(mask_cls, mask_logits, sam_logits, self.cls_logits.to(mask_logits),
                                     self.seen, self.options)


def sam_masks_for_pooling(sam_logits: torch.Tensor, res5_size: tuple[int, int],
                          options: SamEnsembleOptions) -> torch.Tensor:
    """SAM logits (M, H0, W0) → the (M, h32, w32) float32 logits the official mask pooling binarises.

    Nearest resize to ``res5_size`` (the padded input's stride-32 grid); with ``pooling_pad``, zero
    padding bottom-right to a multiple of it and the pooling's bilinear resize back to ``res5_size``.
    """
    h, w = res5_size
    if sam_logits.shape[0] == 0:  # no SAM mask passed the generator's filters
        return sam_logits.new_zeros(0, h, w, dtype=torch.float32)
    x = F.interpolate(sam_logits[None].float(), size=(h, w), mode="nearest")
    if options.pooling_pad is not None:
        p = options.pooling_pad
        x = F.pad(x, (0, -(-w // p) * p - w, 0, -(-h // p) * p - h))  # ImageList.from_tensors, value 0
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)  # MaskPooling
    return x[0]


def classify_sam_masks(sam_logits: torch.Tensor, res5_size: tuple[int, int], classifier: MaskClassifier,
                       options: SamEnsembleOptions) -> torch.Tensor:
    """(M, H0, W0) SAM logits → (M, K+1) out-of-vocabulary logits (void last) from ``classifier``.

    ``classifier`` pools the frozen CLIP res5 feature over ``masks > 0`` at ``res5_size`` and applies
    the CLIP head and text classifier, as the out-of-vocabulary branch does (``mask_classifier_runner``
    wraps the ``mask_classifier`` graph).
    """
    return classifier(sam_masks_for_pooling(sam_logits, res5_size, options))


def sam_semantic_ensemble(mask_cls: torch.Tensor, mask_logits: torch.Tensor, sam_logits: torch.Tensor,
                          sam_cls_logits: torch.Tensor, seen: torch.Tensor,
                          options: SamEnsembleOptions) -> torch.Tensor:
    """The official ``geo_with_sam_inference``: semantic scores with confident SAM masks added.

    Args:
        mask_cls: (Q, K+1) float32 ensembled log-probabilities of the queries, void last.
        mask_logits: (Q, H, W) float32 query mask logits.
        sam_logits: (M, H, W) float32 SAM mask logits at the same (H, W) (``resize_sam_logits``).
        sam_cls_logits: (M, K+1) float32 out-of-vocabulary logits of the SAM masks, void last.
        seen: (K,) float32 or bool, 1 for classes seen in training.
    Returns:
        (K, H, W) float32 scores: seen c: Σ_q p_qc σ(m_q); unseen c: (1 - α) Σ_q p_qc σ(m_q)
        + α Σ_{m kept} s_mc σ(sam_m), with p = softmax(mask_cls)[:, :K], s = softmax(sam_cls_logits)
        [:, :K] and kept = max over unseen c of s_mc > ``keep_threshold``. With no SAM mask at all
        (M = 0) it is the plain semantic inference, as upstream. The seen-class SAM weight is 0.
    """
    p = mask_cls.softmax(-1)[..., :-1]  # (Q, K)
    masks = mask_logits.sigmoid()
    if sam_logits.shape[0] == 0:
        return torch.einsum("qc,qhw->chw", p, masks)
    seen = seen.to(p)
    s = sam_cls_logits.softmax(-1)[..., :-1]  # (M, K)
    query_cls = p * seen + p * (1 - seen) * (1 - options.alpha)
    sam_unseen = s * (1 - seen)
    kept = sam_unseen.max(dim=1).values > options.keep_threshold  # (M,)
    semseg = torch.einsum("qc,qhw->chw", query_cls, masks)
    if kept.any():
        semseg = semseg + torch.einsum("mc,mhw->chw", sam_unseen[kept] * options.alpha, sam_logits[kept].sigmoid())
    return semseg


def resize_sam_logits(sam_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(M, H0, W0) → (M, H, W) bilinear, as upstream before the merge (a no-op at the same size)."""
    if tuple(sam_logits.shape[-2:]) == tuple(size):
        return sam_logits
    return F.interpolate(sam_logits[None], size=size, mode="bilinear", align_corners=False)[0]


def mask_classifier_runner(runner: Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]],
                           res5: torch.Tensor, text_embeddings: torch.Tensor, synonym_mask: torch.Tensor,
                           num_queries: int) -> MaskClassifier:
    """A ``MaskClassifier`` on the ``mask_classifier`` graph (fixed ``num_queries`` masks per call).

    The (M, h32, w32) masks are nearest-upsampled 8× to the graph's stride-4 ``pred_masks``: the
    graph's bilinear resize back to res5 then returns exactly these values. Masks go in chunks of
    ``num_queries``; the last chunk is padded with empty masks whose logits are dropped.
    """
    def classify(masks: torch.Tensor) -> torch.Tensor:
        up = masks.repeat_interleave(8, dim=-2).repeat_interleave(8, dim=-1)  # stride 32 → stride 4
        out = []
        for start in range(0, up.shape[0], num_queries):
            chunk = up[start:start + num_queries]
            n = chunk.shape[0]
            if n < num_queries:
                chunk = torch.cat([chunk, chunk.new_full((num_queries - n, *chunk.shape[1:]), -1.0)])
            logits = runner({"res5": res5, "pred_masks": chunk[None], "text_embeddings": text_embeddings,
                             "synonym_mask": synonym_mask})["out_vocab_logits"]
            out.append(logits[0, :n])
        return torch.cat(out) if out else masks.new_zeros(0, text_embeddings.shape[0] + 1)

    return classify
