"""Data: the COCO-panoptic reader, LSJ augmentation, synthetic sets and the benchmark registry.

Consumes datasets on disk; produces per-image training targets (uint8 image (3, H, W), ``labels``
(N,) int64, ``masks`` (N, H, W) bool) and checked paths for evaluation.
"""

from __future__ import annotations

import importlib

# name -> module: imported on first use (PEP 562), so that `cmpf train --help` and the registry's
# users (cmpf.data.registry) do not import torch through this package
_HOMES = {
    **dict.fromkeys(("CocoPanopticDataset", "PanopticCategories", "PanopticRecord", "PanopticSegment",
                     "collate_panoptic", "id2rgb", "load_coco_panoptic_json", "rgb2id"), "cmpf.data.coco_panoptic"),
    **dict.fromkeys(("DATASETS", "DatasetSpec", "check_dataset", "dataset_root"), "cmpf.data.registry"),
    **dict.fromkeys(("SyntheticSet", "make_synthetic_coco_panoptic"), "cmpf.data.synthetic"),
    **dict.fromkeys(("LargeScaleJitter", "LSJConfig"), "cmpf.data.transforms"),
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
