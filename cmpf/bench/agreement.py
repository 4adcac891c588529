"""Level 2 of ``cmpf parity``: one image's candidate segmentation against the reference's.

Two ``Segmentation`` s of the same image (same vocabulary) → semantic-label agreement (fraction of
pixels), panoptic quality of the candidate with the reference's panoptic map as ground truth
(panopticapi semantics, through ``cmpf.evaluation.PanopticAccumulator``) and instance F1 (same
class, mask IoU > 0.5, greedy in the candidate's score order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from cmpf.evaluation import PanopticAccumulator
from cmpf.postprocess import Segmentation
from cmpf.vocabulary import Vocabulary


@dataclass(frozen=True)
class ImageAgreement:
    image: str
    semantic: float  # fraction of pixels with the same semantic label
    pq: Optional[float]  # percent; None when neither side has a segment
    instance_f1: float  # 1.0 when neither side has an instance
    segments: tuple[int, int]  # (reference, candidate)
    instances: tuple[int, int]

    def to_json(self) -> dict:
        return {"image": self.image, "semantic": self.semantic, "pq": self.pq, "instance_f1": self.instance_f1,
                "segments": list(self.segments), "instances": list(self.instances)}


def panoptic_categories(vocabulary: Vocabulary) -> list[dict]:
    """The vocabulary as COCO panoptic categories (id = class index)."""
    return [{"id": k, "name": name, "isthing": int(thing)}
            for k, (name, thing) in enumerate(zip(vocabulary.names, vocabulary.is_thing))]


def image_agreement(name: str, reference: Segmentation, candidate: Segmentation,
                    vocabulary: Vocabulary) -> ImageAgreement:
    """Candidate vs reference on one image (both at the image's size)."""
    if reference.panoptic.shape != candidate.panoptic.shape:
        raise ValueError(f"{name}: candidate segmentation {tuple(candidate.panoptic.shape)}, reference "
                         f"{tuple(reference.panoptic.shape)}")
    semantic = float((reference.semantic_labels == candidate.semantic_labels).float().mean())
    pq = None
    if reference.segments or candidate.segments:
        acc = PanopticAccumulator(panoptic_categories(vocabulary))
        gt = [{**s, "iscrowd": 0} for s in reference.segments]
        acc.add(_ids(reference.panoptic), gt, _ids(candidate.panoptic), candidate.segments, image_id=name)
        pq = acc.result()["All"]["pq"]
    f1 = instance_f1(reference, candidate)
    return ImageAgreement(name, semantic, pq, f1, (len(reference.segments), len(candidate.segments)),
                          (len(reference.instance_classes), len(candidate.instance_classes)))


def instance_f1(reference: Segmentation, candidate: Segmentation, iou: float = 0.5) -> float:
    """F1 of the candidate's instances against the reference's (same class and mask IoU > ``iou``)."""
    n_ref, n_cand = len(reference.instance_classes), len(candidate.instance_classes)
    if n_ref == 0 and n_cand == 0:
        return 1.0
    ref = reference.instance_masks.flatten(1).float()  # (N_ref, H·W)
    cand = candidate.instance_masks.flatten(1).float()
    inter = cand @ ref.T  # (N_cand, N_ref)
    union = cand.sum(1, keepdim=True) + ref.sum(1) - inter
    ious = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    same = candidate.instance_classes[:, None] == reference.instance_classes[None, :]
    ious = torch.where(same, ious, torch.zeros_like(ious))
    taken, matched = set(), 0
    for c in torch.argsort(candidate.instance_scores, descending=True).tolist():
        free = [r for r in range(n_ref) if r not in taken and float(ious[c, r]) > iou]
        if free:
            taken.add(max(free, key=lambda r: float(ious[c, r])))
            matched += 1
    return 2 * matched / (n_ref + n_cand)


def _ids(panoptic: torch.Tensor) -> np.ndarray:
    return panoptic.detach().cpu().numpy().astype(np.int64)
