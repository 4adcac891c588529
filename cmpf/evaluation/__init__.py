"""Evaluation metrics behind ``cmpf metrics``: panoptic PQ (panopticapi semantics), semantic mIoU
(detectron2 ``SemSegEvaluator`` semantics) and COCO instance segm AP (pycocotools ``COCOeval``).

File-based entry points (``evaluate_*``) and in-memory accumulators for dataset-evaluation loops;
every result is a dict in percent with ``None`` where the reference leaves a value undefined.
"""

from __future__ import annotations

from cmpf.evaluation.instance import InstanceAccumulator, evaluate_instance, evaluate_instance_dicts
from cmpf.evaluation.panoptic import PanopticAccumulator, evaluate_panoptic
from cmpf.evaluation.report import MetricsInputError
from cmpf.evaluation.semantic import SemanticAccumulator, evaluate_semantic

__all__ = [
    "InstanceAccumulator",
    "MetricsInputError",
    "PanopticAccumulator",
    "SemanticAccumulator",
    "evaluate_instance",
    "evaluate_instance_dicts",
    "evaluate_panoptic",
    "evaluate_semantic",
]
