"""Per-image evaluation on one rank: a :class:`~cmpf.postprocess.Segmentation` against its ground truth.

Each image becomes a small picklable record (panoptic counts, instance results with the dataset's
category ids, derived instance ground truth); the semantic confusion matrix is summed per rank. The
records are merged in image order by :func:`cmpf.evaluation.gather.reduce_payloads`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cmpf.codecs import encode_rles, mask_bbox
from cmpf.evaluation.panoptic import PanopticAccumulator, read_panoptic_png
from cmpf.evaluation.prepare import PreparedDataset, Sample
from cmpf.evaluation.semantic import SemanticAccumulator, read_label_png
from cmpf.postprocess import Segmentation


class ShardState:
    """What one rank accumulates: per-image records plus its semantic confusion matrix."""

    def __init__(self, data: PreparedDataset) -> None:
        self.data = data
        self.records: list[dict] = []
        self.semantic = (
            SemanticAccumulator(len(data.vocabulary), data.spec.ignore_label) if "semantic" in data.tasks else None
        )

    def add(self, sample: Sample, seg: Segmentation) -> None:
        data, tasks = self.data, self.data.tasks
        record: dict[str, Any] = {"index": sample.index}
        gt_ids = None
        if "panoptic" in tasks or data.derive_instances:
            gt_ids = read_panoptic_png(sample.panoptic_png)
        if "panoptic" in tasks:
            ids = data.mapping.panoptic_ids
            pred_segments = [
                {"id": int(s["id"]), "category_id": ids[int(s["category_id"])], "isthing": bool(s["isthing"])}
                for s in seg.segments
            ]
            acc = PanopticAccumulator(data.panoptic_categories)
            acc.add(gt_ids, sample.segments_info, _as_numpy(seg.panoptic).astype(np.int64), pred_segments,
                    image_id=sample.image_id)
            record["panoptic"] = acc.counts()
        if self.semantic is not None:
            gt = read_label_png(sample.semantic_path)
            pred = _as_numpy(seg.semantic_labels).astype(np.int64)
            self.semantic.add(gt, pred, name=str(sample.semantic_path))
        if "instance" in tasks:
            record["instances"] = self._instances(sample, seg)
            if data.derive_instances:
                record["instance_gt"] = self._derived_gt(sample, gt_ids)
        self.records.append(record)

    def _instances(self, sample: Sample, seg: Segmentation) -> list[dict]:
        ids = self.data.mapping.instance_ids
        image_id = sample.index + 1 if self.data.derive_instances else sample.instance_image_id
        scores = _as_numpy(seg.instance_scores).astype(np.float64)
        classes = _as_numpy(seg.instance_classes).astype(np.int64)
        rles = encode_rles(_as_numpy(seg.instance_masks).astype(bool))
        out = []
        for score, cls, rle in zip(scores.tolist(), classes.tolist(), rles):
            category = ids[cls]
            if category is None:  # not a thing class of this dataset
                continue
            out.append({"image_id": image_id, "category_id": category, "segmentation": rle, "score": score})
        return out

    def _derived_gt(self, sample: Sample, gt_ids: np.ndarray) -> dict:
        """COCO instance annotations of the thing segments of a panoptic annotation."""
        things = {int(c["id"]) for c in self.data.panoptic_categories if c["isthing"]}
        segs = [s for s in sample.segments_info if int(s["category_id"]) in things]
        masks = np.stack([gt_ids == int(s["id"]) for s in segs]) if segs else np.zeros((0,) + gt_ids.shape, bool)
        anns = []
        for s, m, rle in zip(segs, masks, encode_rles(masks)):
            if not m.any():
                continue
            anns.append({"image_id": sample.index + 1, "category_id": int(s["category_id"]), "segmentation": rle,
                         "area": int(m.sum()), "bbox": mask_bbox(m), "iscrowd": int(s.get("iscrowd", 0))})
        image = {"id": sample.index + 1, "file_name": sample.image_path.name,
                 "height": int(gt_ids.shape[0]), "width": int(gt_ids.shape[1])}
        return {"image": image, "annotations": anns}

    def payload(self) -> dict:
        return {
            "records": self.records,
            "semantic": None if self.semantic is None else (self.semantic.conf_matrix, self.semantic.num_images),
        }


def _as_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
