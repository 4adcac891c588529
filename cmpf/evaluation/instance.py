"""COCO instance-segmentation AP (``segm``) with pycocotools' ``COCOeval``, reported like detectron2.

The summary (AP, AP50, AP75, APs, APm, APl) is ``COCOeval.stats[:6]``; per-category AP is the mean
of the defined (> -1) entries of ``eval["precision"][:, :, k, 0, -1]`` (all areas, 100 detections).
As in detectron2's ``COCOEvaluator``, a result's ``bbox`` is dropped before loading, so the area
ranges use the mask area. Undefined values (no ground truth) are ``None``. Results are in percent.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cmpf.evaluation.report import MetricsInputError, PathLike, finite_or_none, load_json

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_RESULT_KEYS = ("image_id", "category_id", "segmentation", "score")


def _quiet() -> contextlib.AbstractContextManager:
    """Silence pycocotools' prints."""
    return contextlib.redirect_stdout(io.StringIO())


def _gt_coco(dataset: Mapping[str, Any]) -> COCO:
    if not isinstance(dataset, Mapping) or not {"images", "annotations", "categories"} <= set(dataset):
        raise MetricsInputError("ground truth needs 'images', 'annotations' and 'categories'")
    coco = COCO()
    coco.dataset = {
        **dataset,
        "images": list(dataset["images"]),
        # COCOeval rewrites annotations in place (RLE conversion, 'ignore'): work on copies
        "annotations": [dict(a) for a in dataset["annotations"]],
        "categories": list(dataset["categories"]),
    }
    with _quiet():
        try:
            coco.createIndex()
        except (KeyError, TypeError) as e:
            raise MetricsInputError(f"malformed ground truth: missing or invalid field {e}") from e
    return coco


def _dt_coco(gt: COCO, predictions: Sequence[Mapping[str, Any]]) -> COCO:
    results = []
    for i, p in enumerate(predictions):
        if not isinstance(p, Mapping) or not set(_RESULT_KEYS) <= set(p):
            raise MetricsInputError(f"prediction #{i} needs the keys {', '.join(_RESULT_KEYS)}")
        r = dict(p)
        r.pop("bbox", None)  # detectron2: else COCO uses the box area for the area ranges
        results.append(r)
    unknown = {r["image_id"] for r in results} - set(gt.getImgIds())
    if unknown:
        raise MetricsInputError(f"predictions refer to image ids not in the ground truth: {sorted(unknown)[:5]}")
    if not results:  # COCO.loadRes cannot take an empty list
        dt = COCO()
        dt.dataset = {
            "images": list(gt.dataset["images"]),
            "categories": copy.deepcopy(gt.dataset["categories"]),
            "annotations": [],
        }
        with _quiet():
            dt.createIndex()
        return dt
    with _quiet():
        try:
            return gt.loadRes(results)
        except (KeyError, TypeError, ValueError, IndexError, AssertionError) as e:
            raise MetricsInputError(f"malformed prediction segmentation (expected COCO RLE): {e!r}") from e


def _run_cocoeval(gt: COCO, dt: COCO) -> COCOeval:
    ev = COCOeval(gt, dt, iouType="segm")
    with _quiet():
        try:
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        except (KeyError, TypeError, ValueError) as e:
            raise MetricsInputError(f"COCO evaluation failed on malformed input: {e!r}") from e
    return ev


def _summarize(ev: COCOeval) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: (100.0 * float(ev.stats[i]) if ev.stats[i] >= 0 else None) for i, k in enumerate(SUMMARY_KEYS)
    }
    precisions = ev.eval["precision"]  # (T IoUs, R recalls, K classes, A areas, M maxDets)
    per_class: dict[str, Optional[float]] = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precisions[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[str(cat_id)] = finite_or_none(100.0 * float(np.mean(p))) if p.size else None
    out["per_class"] = per_class
    return out


class InstanceAccumulator:
    """Collects COCO result dicts for one ground-truth dataset, evaluated at :meth:`result`.

    Args:
        gt_dataset: a COCO instance dataset dict (``images``, ``annotations``, ``categories``).
    """

    def __init__(self, gt_dataset: Mapping[str, Any]) -> None:
        self._gt = _gt_coco(gt_dataset)
        self.predictions: list[dict] = []

    @property
    def names(self) -> dict[int, str]:
        """Category id -> name."""
        return {int(c["id"]): str(c.get("name", "")) for c in self._gt.dataset["categories"]}

    def add(self, predictions: Sequence[Mapping[str, Any]]) -> None:
        """Add COCO results (``image_id``, ``category_id``, RLE ``segmentation``, ``score``)."""
        self.predictions.extend(dict(p) for p in predictions)

    def result(self) -> dict[str, Any]:
        """``{"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class": {"<category_id>": v}}`` in percent."""
        return _summarize(_run_cocoeval(self._gt, _dt_coco(self._gt, self.predictions)))


def evaluate_instance_dicts(
    gt_dataset: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Segm AP (percent) of in-memory COCO results; see :meth:`InstanceAccumulator.result`."""
    acc = InstanceAccumulator(gt_dataset)
    acc.add(predictions)
    return acc.result()


def load_instance_predictions(pred_json: PathLike) -> list:
    """Read COCO results: a list of dicts, or a dict holding them under ``annotations``."""
    preds = load_json(pred_json, "prediction JSON")
    if isinstance(preds, Mapping):
        if "annotations" not in preds:
            raise MetricsInputError(f"prediction JSON {str(pred_json)!r} has no 'annotations'")
        preds = preds["annotations"]
    if not isinstance(preds, list):
        raise MetricsInputError(f"prediction JSON {str(pred_json)!r} must be a list of results")
    return preds


def instance_accumulator_from_files(gt_json: PathLike, pred_json: PathLike) -> InstanceAccumulator:
    """An :class:`InstanceAccumulator` holding the results of ``pred_json`` for ``gt_json``."""
    gt = load_json(gt_json, "ground-truth JSON")
    if not isinstance(gt, Mapping) or not {"images", "annotations", "categories"} <= set(gt):
        raise MetricsInputError(f"ground-truth JSON {str(gt_json)!r} needs 'images', 'annotations', 'categories'")
    acc = InstanceAccumulator(gt)
    acc.add(load_instance_predictions(pred_json))
    return acc


def evaluate_instance(gt_json: PathLike, pred_json: PathLike) -> dict[str, Any]:
    """Segm AP (percent) of a COCO result file against a COCO instance annotation file."""
    return instance_accumulator_from_files(gt_json, pred_json).result()
