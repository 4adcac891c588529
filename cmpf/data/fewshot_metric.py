"""The few-shot segmentation metric of HSNet / Fusioner: mIoU over the fold's classes and FB-IoU.

``FU:utils/metric.py`` and ``FU:utils/utils.py::update_metric`` (= ``HS:common/evaluation.py``,
``HS:common/logger.py``): per episode whose ground truth is not empty, ignored pixels are taken out
of both masks; the background (0) and foreground (1) intersections and unions are added into
(2, classes) buffers at the episode's label id. mIoU = mean over the classes with a non-zero
foreground union of intersection / union (foreground row); FB-IoU = mean over {background,
foreground} of (Σ intersection / Σ union) over those classes. Both are fractions, as the official
code prints them (HSNet multiplies by 100).
"""

from __future__ import annotations

import numpy as np


class FewShotIoU:
    """Accumulates episodes of one dataset (``num_labels`` = label ids incl. background: 21 or 81)."""

    def __init__(self, num_labels: int):
        self.intersection = np.zeros((2, num_labels), dtype=np.int64)
        self.union = np.zeros((2, num_labels), dtype=np.int64)
        self.episodes = 0

    def update(self, pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray, label: int) -> bool:
        """One episode: (H, W) bool prediction, ground truth and ignore area; False (skipped) for an empty gt."""
        pred, gt, ignore = np.asarray(pred, bool), np.asarray(gt, bool), np.asarray(ignore, bool)
        if pred.shape != gt.shape or gt.shape != ignore.shape:
            raise ValueError(f"pred {pred.shape}, gt {gt.shape} and ignore {ignore.shape} must have one shape")
        if (gt & ignore).any():
            raise ValueError("ground-truth pixels inside the ignore area")  # the official assert
        if not gt.any():
            return False
        keep = ~ignore
        p, g = pred[keep], gt[keep]
        inter = np.array([(~p & ~g).sum(), (p & g).sum()])
        union = np.array([(~p).sum(), p.sum()]) + np.array([(~g).sum(), g.sum()]) - inter
        self.intersection[:, label] += inter
        self.union[:, label] += union
        self.episodes += 1
        return True

    def compute(self) -> dict:
        """{"miou", "fbiou" (fractions), "per_class" {label id: foreground IoU}, "episodes"}."""
        seen = np.flatnonzero(self.union[1] != 0)
        if not len(seen):
            raise ValueError("no episode with a non-empty ground truth was evaluated")
        iou = self.intersection[:, seen] / np.maximum(self.union[:, seen], 1)
        fb = self.intersection[:, seen].sum(axis=1) / self.union[:, seen].sum(axis=1)
        return {"miou": float(iou[1].mean()), "fbiou": float(fb.mean()),
                "per_class": {int(c): float(v) for c, v in zip(seen, iou[1])}, "episodes": self.episodes}
