"""Panoptic quality (PQ / SQ / RQ) with the semantics of panopticapi's ``pq_compute``.

Per image: segment ids come from PNGs (``id = R + 256 G + 256^2 B``), 0 is VOID. A ground-truth and
a predicted segment of the same category match when ``IoU > 0.5``, with the IoU's union reduced by
the predicted segment's VOID pixels. Crowd ground-truth segments are never matched nor counted as
false negatives; an unmatched prediction is ignored (not a false positive) when more than half of
its area lies on VOID plus the crowd region of its own category. Per category,
``PQ = sum IoU / (TP + FP/2 + FN/2)``, ``SQ = sum IoU / TP``, ``RQ = TP / (TP + FP/2 + FN/2)``; the
All / Things / Stuff averages skip categories with ``TP + FP + FN == 0``. Results are in percent.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from cmpf.codecs import id2rgb, rgb2id  # noqa: F401 (re-exported)
from cmpf.evaluation.report import MetricsInputError, PathLike, load_json, require_dir

OFFSET = 256 * 256 * 256
VOID = 0


def read_panoptic_png(path: PathLike) -> np.ndarray:
    """Read a COCO panoptic PNG.

    Args:
        path: an RGB(A) or palette PNG.

    Returns:
        (H, W) int64 segment ids.
    """
    try:
        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGB")
            arr = np.array(im)
    except FileNotFoundError as e:
        raise MetricsInputError(f"panoptic PNG {str(path)!r} does not exist") from e
    except OSError as e:
        raise MetricsInputError(f"cannot read panoptic PNG {str(path)!r}: {e}") from e
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise MetricsInputError(f"panoptic PNG {str(path)!r} is not an RGB image (shape {arr.shape})")
    return rgb2id(arr)


@dataclass
class _CatStat:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


def _index_segments(segments: Iterable[Mapping[str, Any]], what: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for el in segments:
        if not isinstance(el, Mapping) or "id" not in el or "category_id" not in el:
            raise MetricsInputError(f"{what}: every segments_info entry needs 'id' and 'category_id'")
        out[int(el["id"])] = dict(el)
    return out


def _check_ids(ids: np.ndarray, what: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise MetricsInputError(f"{what}: expected an (H, W) integer id map, got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
        raise MetricsInputError(f"{what}: segment ids must lie in [0, 256^3)")
    return ids.astype(np.uint64)


class PanopticAccumulator:
    """Accumulates panopticapi's per-category TP / FP / FN / IoU-sum over images.

    Args:
        categories: COCO panoptic categories, each with ``id`` and ``isthing`` (and ``name``).
    """

    def __init__(self, categories: Sequence[Mapping[str, Any]]) -> None:
        self.categories: dict[int, dict] = {}
        for c in categories:
            if not isinstance(c, Mapping) or "id" not in c or "isthing" not in c:
                raise MetricsInputError("every category needs 'id' and 'isthing'")
            self.categories[int(c["id"])] = dict(c)
        self._stats: defaultdict[int, _CatStat] = defaultdict(_CatStat)
        self.num_images = 0

    @property
    def names(self) -> dict[int, str]:
        """Category id -> name (empty string where the category has no name)."""
        return {k: str(v.get("name", "")) for k, v in self.categories.items()}

    def counts(self) -> dict[int, tuple[float, int, int, int]]:
        """Category id -> (IoU sum, TP, FP, FN) accumulated so far."""
        return {k: (s.iou, s.tp, s.fp, s.fn) for k, s in self._stats.items()}

    def add_counts(self, counts: Mapping[int, Sequence], num_images: int) -> None:
        """Add counts of another accumulator over the same categories (merging shards or images).

        Args:
            counts: category id -> (IoU sum, TP, FP, FN), as returned by :meth:`counts`.
            num_images: how many images ``counts`` covers.
        """
        for cat, (iou, tp, fp, fn) in counts.items():
            stat = self._stats[cat]
            stat.iou += iou
            stat.tp += tp
            stat.fp += fp
            stat.fn += fn
        self.num_images += num_images

    def add(
        self,
        gt_png_ids: np.ndarray,
        gt_segments: Sequence[Mapping[str, Any]],
        pred_png_ids: np.ndarray,
        pred_segments: Sequence[Mapping[str, Any]],
        image_id: Any = None,
    ) -> None:
        """Add one image.

        Args:
            gt_png_ids: (H, W) ground-truth segment ids, 0 = VOID.
            gt_segments: the image's ground-truth ``segments_info`` (``id``, ``category_id``,
                ``iscrowd``, ``area``; a missing ``area`` is counted from ``gt_png_ids``).
            pred_png_ids: (H, W) predicted segment ids, 0 = VOID.
            pred_segments: the predicted ``segments_info`` (``id``, ``category_id``); areas are
                always counted from ``pred_png_ids``.
            image_id: used in error messages only.
        """
        tag = f"In the image with ID {image_id}"
        gt = _check_ids(gt_png_ids, f"{tag}, ground truth")
        pred = _check_ids(pred_png_ids, f"{tag}, prediction")
        if gt.shape != pred.shape:
            raise MetricsInputError(f"{tag} ground truth is {gt.shape} but the prediction is {pred.shape}")
        gt_segms = _index_segments(gt_segments, f"{tag}, ground truth")
        pred_segms = self._pred_areas(pred, _index_segments(pred_segments, f"{tag}, prediction"), tag)
        self._fill_gt_areas(gt, gt_segms)

        labels, counts = np.unique(gt * np.uint64(OFFSET) + pred, return_counts=True)
        gt_pred_map = {
            (lab // OFFSET, lab % OFFSET): cnt for lab, cnt in zip(labels.tolist(), counts.tolist())
        }
        gt_matched, pred_matched = self._match(gt_pred_map, gt_segms, pred_segms)
        crowd_by_cat: dict[Any, int] = {}
        for gt_label, info in gt_segms.items():
            if gt_label in gt_matched:
                continue
            if info.get("iscrowd", 0) == 1:
                crowd_by_cat[info["category_id"]] = gt_label
                continue
            self._stats[info["category_id"]].fn += 1
        for pred_label, info in pred_segms.items():
            if pred_label in pred_matched:
                continue
            ignored = gt_pred_map.get((VOID, pred_label), 0)
            if info["category_id"] in crowd_by_cat:
                ignored += gt_pred_map.get((crowd_by_cat[info["category_id"]], pred_label), 0)
            if ignored / info["area"] > 0.5:
                continue
            self._stats[info["category_id"]].fp += 1
        self.num_images += 1

    def _pred_areas(self, pred: np.ndarray, pred_segms: dict[int, dict], tag: str) -> dict[int, dict]:
        """Set predicted areas from the PNG and run panopticapi's sanity checks."""
        unseen = set(pred_segms)
        labels, counts = np.unique(pred, return_counts=True)
        for label, cnt in zip(labels.tolist(), counts.tolist()):
            if label not in pred_segms:
                if label == VOID:
                    continue
                raise MetricsInputError(
                    f"{tag} segment with ID {label} is presented in PNG and not presented in JSON."
                )
            pred_segms[label]["area"] = cnt
            unseen.discard(label)
            if pred_segms[label]["category_id"] not in self.categories:
                raise MetricsInputError(
                    f"{tag} segment with ID {label} has unknown category_id "
                    f"{pred_segms[label]['category_id']}."
                )
        if unseen:
            raise MetricsInputError(
                f"{tag} the following segment IDs {sorted(unseen)} are presented in JSON "
                "and not presented in PNG."
            )
        return pred_segms

    @staticmethod
    def _fill_gt_areas(gt: np.ndarray, gt_segms: dict[int, dict]) -> None:
        """Count ``area`` from the PNG for ground-truth segments whose JSON lacks it."""
        missing = [k for k, v in gt_segms.items() if "area" not in v]
        if not missing:
            return
        labels, counts = np.unique(gt, return_counts=True)
        found = dict(zip(labels.tolist(), counts.tolist()))
        for k in missing:
            gt_segms[k]["area"] = found.get(k, 0)

    def _match(
        self, gt_pred_map: Mapping[tuple[int, int], int], gt_segms: dict, pred_segms: dict
    ) -> tuple[set, set]:
        """Count TPs (same category, void-corrected IoU > 0.5); return the matched id sets."""
        gt_matched, pred_matched = set(), set()
        for (gt_label, pred_label), intersection in gt_pred_map.items():
            if gt_label not in gt_segms or pred_label not in pred_segms:
                continue
            g, p = gt_segms[gt_label], pred_segms[pred_label]
            if g.get("iscrowd", 0) == 1 or g["category_id"] != p["category_id"]:
                continue
            union = p["area"] + g["area"] - intersection - gt_pred_map.get((VOID, pred_label), 0)
            iou = intersection / union
            if iou > 0.5:
                stat = self._stats[g["category_id"]]
                stat.tp += 1
                stat.iou += iou
                gt_matched.add(gt_label)
                pred_matched.add(pred_label)
        return gt_matched, pred_matched

    def _average(self, isthing: Optional[bool]) -> tuple[dict, dict]:
        pq = sq = rq = 0.0
        n = 0
        per_class: dict[str, dict] = {}
        for label, info in self.categories.items():
            if isthing is not None and (info["isthing"] == 1) != isthing:
                continue
            s = self._stats.get(label, _CatStat())
            if s.tp + s.fp + s.fn == 0:
                per_class[str(label)] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
            pq_c, sq_c, rq_c = s.iou / denom, (s.iou / s.tp if s.tp else 0.0), s.tp / denom
            per_class[str(label)] = {"pq": 100 * pq_c, "sq": 100 * sq_c, "rq": 100 * rq_c}
            pq, sq, rq = pq + pq_c, sq + sq_c, rq + rq_c
        if n == 0:
            return {"pq": None, "sq": None, "rq": None, "n": 0}, per_class
        return {"pq": 100 * pq / n, "sq": 100 * sq / n, "rq": 100 * rq / n, "n": n}, per_class

    def result(self) -> dict[str, Any]:
        """PQ / SQ / RQ in percent.

        Returns:
            ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {"<id>": {"pq", "sq",
            "rq"}}}``. A group without any counted category has ``None`` values and ``n == 0``; a
            category with ``TP + FP + FN == 0`` is reported as 0.0 (as panopticapi does) and is not
            counted in the averages.
        """
        out: dict[str, Any] = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            out[name], per_class = self._average(isthing)
            if name == "All":
                out["per_class"] = per_class
        return out


def _pred_annotations(pred_json: Any, path: PathLike) -> list:
    if isinstance(pred_json, Mapping):
        if "annotations" not in pred_json:
            raise MetricsInputError(f"prediction JSON {str(path)!r} has no 'annotations'")
        pred_json = pred_json["annotations"]
    if not isinstance(pred_json, list):
        raise MetricsInputError(f"prediction JSON {str(path)!r} must be a dict or a list of annotations")
    return pred_json


def _check_annotation(ann: Any, path: PathLike) -> None:
    if not isinstance(ann, Mapping) or not {"image_id", "file_name", "segments_info"} <= set(ann):
        raise MetricsInputError(
            f"{str(path)!r}: every annotation needs 'image_id', 'file_name' and 'segments_info'"
        )


def panoptic_accumulator_from_files(
    gt_json: PathLike, gt_dir: PathLike, pred_json: PathLike, pred_dir: PathLike, progress: bool = False
) -> PanopticAccumulator:
    """Accumulate PQ statistics over a COCO panoptic ground truth and a prediction set on disk.

    Args:
        gt_json: COCO panoptic annotation JSON (``annotations``, ``categories``).
        gt_dir: folder with the ground-truth PNGs named by ``file_name``.
        pred_json: predictions, a COCO-style dict with ``annotations`` or a list of annotations.
        pred_dir: folder with the predicted PNGs.
        progress: show a tqdm bar over images.

    Returns:
        The filled accumulator; every ground-truth image must have a prediction.
    """
    gt = load_json(gt_json, "ground-truth JSON")
    if not isinstance(gt, Mapping) or "annotations" not in gt or "categories" not in gt:
        raise MetricsInputError(f"ground-truth JSON {str(gt_json)!r} needs 'annotations' and 'categories'")
    preds = _pred_annotations(load_json(pred_json, "prediction JSON"), pred_json)
    gt_dir = require_dir(gt_dir, "ground-truth folder")
    pred_dir = require_dir(pred_dir, "prediction folder")
    for ann in gt["annotations"]:
        _check_annotation(ann, gt_json)
    for ann in preds:
        _check_annotation(ann, pred_json)
    by_image = {ann["image_id"]: ann for ann in preds}
    missing = [a["image_id"] for a in gt["annotations"] if a["image_id"] not in by_image]
    if missing:
        raise MetricsInputError(f"no prediction for the image with id: {missing[0]} ({len(missing)} missing)")

    acc = PanopticAccumulator(gt["categories"])
    for gt_ann in tqdm(gt["annotations"], desc="panoptic", unit="img", disable=not progress):
        pred_ann = by_image[gt_ann["image_id"]]
        acc.add(
            read_panoptic_png(Path(gt_dir) / gt_ann["file_name"]),
            gt_ann["segments_info"],
            read_panoptic_png(Path(pred_dir) / pred_ann["file_name"]),
            pred_ann["segments_info"],
            image_id=gt_ann["image_id"],
        )
    return acc


def evaluate_panoptic(
    gt_json: PathLike, gt_dir: PathLike, pred_json: PathLike, pred_dir: PathLike, progress: bool = False
) -> dict[str, Any]:
    """PQ / SQ / RQ (percent) of predictions on disk; see :meth:`PanopticAccumulator.result`."""
    return panoptic_accumulator_from_files(gt_json, gt_dir, pred_json, pred_dir, progress).result()
