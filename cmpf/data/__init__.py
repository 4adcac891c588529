"""Data: the COCO-panoptic reader, LSJ augmentation, synthetic sets and the benchmark registry.

Consumes datasets on disk; produces per-image training targets (uint8 image (3, H, W), ``labels``
(N,) int64, ``masks`` (N, H, W) bool) and checked paths for evaluation.
"""

from __future__ import annotations

from cmpf.lazy import lazy_attributes

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

__getattr__, __dir__ = lazy_attributes(__name__, _HOMES)
