"""Data: the COCO-panoptic reader, LSJ augmentation, synthetic sets and the benchmark registry.

Consumes datasets on disk; produces per-image training targets (uint8 image (3, H, W), ``labels``
(N,) int64, ``masks`` (N, H, W) bool) and checked paths for evaluation.
"""

from __future__ import annotations

from cmpf.data.coco_panoptic import (
    CocoPanopticDataset,
    PanopticCategories,
    PanopticRecord,
    PanopticSegment,
    collate_panoptic,
    id2rgb,
    load_coco_panoptic_json,
    rgb2id,
)
from cmpf.data.registry import DATASETS, DatasetSpec, check_dataset, dataset_root
from cmpf.data.synthetic import SyntheticSet, make_synthetic_coco_panoptic
from cmpf.data.transforms import LargeScaleJitter, LSJConfig

__all__ = [
    "DATASETS",
    "CocoPanopticDataset",
    "DatasetSpec",
    "LSJConfig",
    "LargeScaleJitter",
    "PanopticCategories",
    "PanopticRecord",
    "PanopticSegment",
    "SyntheticSet",
    "check_dataset",
    "collate_panoptic",
    "dataset_root",
    "id2rgb",
    "load_coco_panoptic_json",
    "make_synthetic_coco_panoptic",
    "rgb2id",
]
