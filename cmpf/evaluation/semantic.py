"""Semantic segmentation metrics with the semantics of detectron2's ``SemSegEvaluator``.

An (N+1) x (N+1) confusion matrix (rows: prediction, columns: ground truth) is accumulated, with
ground-truth ``ignore_label`` pixels mapped to index N. Only its top-left N x N block is used:

* ``tp[c]`` = diagonal, ``pos_gt[c]`` = column sums, ``pos_pred[c]`` = row sums (so predictions on
  ignored pixels count nowhere);
* ``ACC[c] = tp / pos_gt`` and ``IoU[c] = tp / (pos_gt + pos_pred - tp)``, both defined only where
  ``pos_gt > 0`` (undefined classes are ``None`` and left out of the means);
* ``mIoU`` / ``mACC`` = means over defined classes, ``fwIoU = sum IoU[c] * pos_gt[c] / sum pos_gt``,
  ``pACC = sum tp / sum pos_gt``.

All results are in percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from cmpf.evaluation.report import MetricsInputError, PathLike, finite_or_none, require_dir


def read_label_png(path: PathLike) -> np.ndarray:
    """Read a single-channel label PNG (grayscale, 16-bit or palette indices).

    Args:
        path: the PNG file.

    Returns:
        (H, W) int64 labels.
    """
    try:
        with Image.open(path) as im:
            arr = np.array(im, dtype=np.int64)
    except FileNotFoundError as e:
        raise MetricsInputError(f"label PNG {str(path)!r} does not exist") from e
    except (OSError, ValueError) as e:
        raise MetricsInputError(f"cannot read label PNG {str(path)!r}: {e}") from e
    if arr.ndim != 2:
        raise MetricsInputError(f"label PNG {str(path)!r} is not single-channel (shape {arr.shape})")
    return arr


class SemanticAccumulator:
    """Accumulates detectron2's semantic-segmentation confusion matrix over images.

    Args:
        num_classes: N; valid labels are 0..N-1.
        ignore_label: ground-truth label excluded from every metric.
    """

    def __init__(self, num_classes: int, ignore_label: int = 255) -> None:
        if int(num_classes) < 1:
            raise MetricsInputError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        n1 = self.num_classes + 1
        self.conf_matrix = np.zeros((n1, n1), dtype=np.int64)
        self.num_images = 0

    def add(self, gt: np.ndarray, pred: np.ndarray, name: str = "") -> None:
        """Add one image.

        Args:
            gt: (H, W) integer labels in [0, N) or ``ignore_label``.
            pred: (H, W) integer predicted labels in [0, N).
            name: used in error messages only.
        """
        tag = f" in {name!r}" if name else ""
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape or gt.ndim != 2:
            raise MetricsInputError(f"ground truth {gt.shape} and prediction {pred.shape} differ{tag}")
        for arr, what in ((gt, "ground truth"), (pred, "prediction")):
            if not np.issubdtype(arr.dtype, np.integer):
                raise MetricsInputError(f"{what} labels must be integers, got {arr.dtype}{tag}")
        n = self.num_classes
        gt = gt.astype(np.int64)
        ignored = gt == self.ignore_label
        bad_gt = ~ignored & ((gt < 0) | (gt >= n))
        if bad_gt.any():
            raise MetricsInputError(
                f"ground-truth label {int(gt[bad_gt][0])} is outside [0, {n}) and is not the ignore "
                f"label {self.ignore_label}{tag}"
            )
        pred = pred.astype(np.int64)
        bad_pred = (pred < 0) | (pred >= n)
        if bad_pred.any():
            raise MetricsInputError(f"predicted label {int(pred[bad_pred][0])} is outside [0, {n}){tag}")
        gt = np.where(ignored, n, gt)
        self.conf_matrix += np.bincount(
            ((n + 1) * pred + gt).reshape(-1), minlength=self.conf_matrix.size
        ).reshape(self.conf_matrix.shape)
        self.num_images += 1

    def result(self) -> dict[str, Any]:
        """Metrics in percent.

        Returns:
            ``{"mIoU", "fwIoU", "mACC", "pACC", "IoU": {"<class>": v}, "ACC": {"<class>": v}}``;
            undefined values are ``None``.
        """
        n = self.num_classes
        cm = self.conf_matrix.astype(np.float64)
        acc = np.full(n, np.nan)
        iou = np.full(n, np.nan)
        tp = cm.diagonal()[:-1]
        pos_gt = cm[:-1, :-1].sum(axis=0)
        pos_pred = cm[:-1, :-1].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            class_weights = pos_gt / pos_gt.sum()
            acc_valid = pos_gt > 0
            acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
            union = pos_gt + pos_pred - tp
            iou_valid = acc_valid & (union > 0)
            iou[iou_valid] = tp[iou_valid] / union[iou_valid]
            macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
            miou = np.sum(iou[iou_valid]) / np.sum(iou_valid)
            fiou = np.sum(iou[iou_valid] * class_weights[iou_valid])
            pacc = np.sum(tp) / np.sum(pos_gt)
        return {
            "mIoU": _pct(miou),
            "fwIoU": _pct(fiou),
            "mACC": _pct(macc),
            "pACC": _pct(pacc),
            "IoU": {str(c): _pct(iou[c]) for c in range(n)},
            "ACC": {str(c): _pct(acc[c]) for c in range(n)},
        }


def _pct(x: float) -> Optional[float]:
    return finite_or_none(100.0 * float(x))


def _png_by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() == ".png"}


def semantic_accumulator_from_files(
    gt_dir: PathLike, pred_dir: PathLike, num_classes: int, ignore_label: int = 255, progress: bool = False
) -> SemanticAccumulator:
    """Accumulate the confusion matrix over label PNGs matched by file stem.

    Args:
        gt_dir: folder of ground-truth label PNGs; every one must have a prediction.
        pred_dir: folder of predicted label PNGs with the same stems (extra files are ignored).
        num_classes: N.
        ignore_label: ground-truth label to ignore.
        progress: show a tqdm bar over images.

    Returns:
        The filled accumulator.
    """
    acc = SemanticAccumulator(num_classes, ignore_label)
    gt_files = _png_by_stem(require_dir(gt_dir, "ground-truth folder"))
    pred_files = _png_by_stem(require_dir(pred_dir, "prediction folder"))
    if not gt_files:
        raise MetricsInputError(f"ground-truth folder {str(gt_dir)!r} contains no PNG files")
    missing = [s for s in gt_files if s not in pred_files]
    if missing:
        raise MetricsInputError(
            f"prediction {str(Path(pred_dir) / (missing[0] + '.png'))!r} does not exist "
            f"({len(missing)} ground-truth images have no prediction)"
        )
    for stem, gt_path in tqdm(gt_files.items(), desc="semantic", unit="img", disable=not progress):
        acc.add(read_label_png(gt_path), read_label_png(pred_files[stem]), name=stem)
    return acc


def evaluate_semantic(
    gt_dir: PathLike, pred_dir: PathLike, num_classes: int, ignore_label: int = 255, progress: bool = False
) -> dict[str, Any]:
    """Semantic metrics (percent) of label PNGs on disk; see :meth:`SemanticAccumulator.result`."""
    return semantic_accumulator_from_files(gt_dir, pred_dir, num_classes, ignore_label, progress).result()
