"""Post-processing shared by every backend: mask logits + ensembled class scores → segmentations.

Consumes, per image, mask logits (Q, h, w) at stride 4 of the padded input and log-probabilities
(Q, K+1) (void last); produces the semantic score map (K, H0, W0), the panoptic id map with its
segments and the top-k instances, at the original image size, with the official thresholds
(MODEL_SPEC.md §8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class Segmentation:
    """One image's results. ``class_names`` index the class ids used below."""

    semantic: torch.Tensor  # (K, H0, W0) float32 class scores; labels = argmax(0)
    panoptic: torch.Tensor  # (H0, W0) int32 segment ids, 0 = void
    segments: list[dict]  # {"id", "category_id" (class index), "isthing", "area"}
    instance_scores: torch.Tensor  # (N,) float32
    instance_classes: torch.Tensor  # (N,) int64
    instance_masks: torch.Tensor  # (N, H0, W0) bool
    class_names: list[str] = field(default_factory=list)

    @property
    def semantic_labels(self) -> torch.Tensor:
        return self.semantic.argmax(0)


def masks_to_image(mask_logits: torch.Tensor, padded_size: tuple[int, int], image_size: tuple[int, int],
                   output_size: tuple[int, int]) -> torch.Tensor:
    """(Q, h, w) stride-4 logits → (Q, H0, W0): upsample to the padded input, crop, resize."""
    x = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)
    x = x[:, :, : image_size[0], : image_size[1]]
    if tuple(x.shape[-2:]) == tuple(output_size):  # not resized: bilinear at scale 1 is the identity
        return x[0]
    return F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)[0]


def semantic_inference(mask_cls: torch.Tensor, masks: torch.Tensor,
                       probs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(Q, K+1) log-probs, (Q, H, W) logits → (K, H, W) scores: Σ_q p(q, c) σ(m_q).

    ``probs``: ``masks.sigmoid()`` where the caller has it (the same values, computed once)."""
    return torch.einsum("qc,qhw->chw", mask_cls.softmax(-1)[..., :-1], masks.sigmoid() if probs is None else probs)


def panoptic_inference(mask_cls: torch.Tensor, masks: torch.Tensor, is_thing: torch.Tensor,
                       object_mask_threshold: float, overlap_threshold: float,
                       probs: Optional[torch.Tensor] = None):
    """Official panoptic merge. Returns (H, W) int32 ids and the segments list (``probs``: as above).

    The official per-query loop (three full-image reductions per kept query) as one pass: every pixel
    belongs to its argmax query, so the areas are bincounts over ``mask_ids`` and the segment ids a
    lookup table; the loop that remains runs over scalars, in the official order (ids, stuff merging and
    areas are the same)."""
    scores, labels = mask_cls.softmax(-1).max(-1)
    num_classes = mask_cls.shape[-1] - 1
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes = scores[keep], labels[keep]
    cur_masks = masks[keep].sigmoid() if probs is None else probs[keep]
    h, w = masks.shape[-2:]
    n = cur_masks.shape[0]
    if n == 0:
        return torch.zeros((h, w), dtype=torch.int32, device=masks.device), []
    mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    inside = cur_masks.gather(0, mask_ids[None])[0] >= 0.5  # the pixel is in its own query's mask
    mask_area = torch.bincount(mask_ids.flatten(), minlength=n).tolist()
    original_area = (cur_masks >= 0.5).flatten(1).sum(1, dtype=torch.int32).tolist()  # int32: half the bool sum's time
    kept_area = torch.bincount(mask_ids[inside], minlength=n).tolist()
    lut = [0] * n  # query → segment id (0: void)
    stuff_ids: dict[int, int] = {}
    segments: list[dict] = []
    current = 0
    things = torch.as_tensor(is_thing, device=cur_classes.device)[cur_classes].tolist()
    for k, (pred_class, thing) in enumerate(zip(cur_classes.tolist(), things)):
        if mask_area[k] == 0 or original_area[k] == 0 or kept_area[k] == 0:
            continue
        if mask_area[k] / original_area[k] < overlap_threshold:
            continue
        if not thing:
            if pred_class in stuff_ids:  # merge stuff regions of one class
                lut[k] = stuff_ids[pred_class]
                continue
            stuff_ids[pred_class] = current + 1
        current += 1
        lut[k] = current
        segments.append({"id": current, "isthing": bool(thing), "category_id": pred_class})
    table = torch.tensor(lut, dtype=torch.int32, device=masks.device)
    panoptic = torch.where(inside, table[mask_ids], torch.zeros((), dtype=torch.int32, device=masks.device))
    areas = torch.bincount(panoptic.flatten().long(), minlength=current + 1).tolist()
    for seg in segments:
        seg["area"] = areas[seg["id"]]
    return panoptic, segments


def instance_inference(mask_cls: torch.Tensor, masks: torch.Tensor, is_thing: torch.Tensor, topk: int,
                       panoptic_on: bool = True, probs: Optional[torch.Tensor] = None):
    """Top-k (query, class) pairs; with panoptic on, thing classes only. Score × mean mask prob
    (``probs``: as above)."""
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[1] - 1
    scores = mask_cls.softmax(-1)[:, :-1]
    labels = torch.arange(num_classes, device=masks.device).repeat(num_queries)
    top_scores, top_idx = scores.flatten().topk(min(topk, scores.numel()), sorted=False)
    top_labels = labels[top_idx]
    top_query = top_idx // num_classes
    if panoptic_on:
        keep = is_thing.to(masks.device)[top_labels]
        top_scores, top_labels, top_query = top_scores[keep], top_labels[keep], top_query[keep]
    # the mask terms once per distinct query (top-k pairs share queries), then spread to the pairs
    queries, pair_query = torch.unique(top_query, return_inverse=True)
    positive = masks[queries] > 0
    query_probs = masks[queries].sigmoid() if probs is None else probs[queries]
    mask_scores = (query_probs * positive).flatten(1).sum(1) / (positive.flatten(1).sum(1, dtype=torch.int32) + 1e-6)
    return top_scores * mask_scores[pair_query], top_labels, positive[pair_query]


def postprocess(mask_cls: torch.Tensor, mask_logits: torch.Tensor, *, padded_size, image_size, output_size,
                is_thing: torch.Tensor, object_mask_threshold: float, overlap_threshold: float,
                topk: int, class_names: list[str], sam=None) -> Segmentation:
    """One image: (Q, K+1) log-probs and (Q, h, w) stride-4 mask logits → ``Segmentation``.

    ``sam``: a ``cmpf.sam_ensemble.SamSemanticInputs``; the semantic output is then the OpenSeg
    SAM-mask ensemble (panoptic and instance outputs are unchanged, as upstream).
    """
    masks = masks_to_image(mask_logits, padded_size, image_size, output_size)
    mask_cls = mask_cls.to(masks)
    probs = masks.sigmoid()  # once, for the three outputs
    semantic = semantic_inference(mask_cls, masks, probs) if sam is None else sam.merge(mask_cls, masks)
    panoptic, segments = panoptic_inference(mask_cls, masks, is_thing, object_mask_threshold, overlap_threshold,
                                            probs)
    scores, classes, inst_masks = instance_inference(mask_cls, masks, is_thing, topk, probs=probs)
    return Segmentation(semantic, panoptic, segments, scores, classes, inst_masks, class_names)
