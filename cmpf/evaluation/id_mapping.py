"""Contiguous class index (the model's output) ↔ a benchmark dataset's category ids.

Class ids follow the detectron2 / FrozenSeg registrations (``register_*.py``): contiguous class
``i`` is the ``i``-th category of the panoptic JSON (COCO, ADE20K, Mapillary: file order = id order;
Cityscapes: = trainId order; BDD: id ``i + 1``); semantic label images already hold contiguous ids
(``ignore_label`` apart), so the argmax is compared as is; instance results carry the panoptic
category id of a thing class (COCO and ADE20K instance JSONs share those ids) or, for instance-only
sets (LVIS), the ``i``-th smallest category id of the instance JSON (detectron2's COCO/LVIS loaders).
Cityscapes instance ground truth is derived from the panoptic annotation (thing segments).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence


@dataclass(frozen=True)
class ClassMapping:
    """Contiguous class index (the model's output) → the dataset's ids.

    Attributes:
        panoptic_ids: contiguous index → panoptic category id (None without a panoptic JSON).
        instance_ids: contiguous index → instance category id, None for classes that are not
            evaluated as instances (stuff); None without instance evaluation.
    """

    panoptic_ids: Optional[tuple[int, ...]] = None
    instance_ids: Optional[tuple[Optional[int], ...]] = None


def panoptic_categories(info: Any, path: Path, num_classes: int) -> list[dict]:
    """The categories of a panoptic JSON, checked: one per class, each with ``id`` and ``isthing``."""
    if not isinstance(info.get("categories") if isinstance(info, dict) else None, list):
        raise ValueError(f"{path} is malformed: expected a 'categories' list")
    cats = info["categories"]
    for c in cats:
        if not isinstance(c, Mapping) or "id" not in c or "isthing" not in c:
            raise ValueError(f"{path} is malformed: every category needs 'id' and 'isthing'")
    if len(cats) != num_classes:
        raise ValueError(
            f"the vocabulary has {num_classes} classes but {path} lists {len(cats)} categories"
        )
    return [dict(c) for c in cats]


def panoptic_ids(pan_cats: Sequence[Mapping]) -> Optional[tuple[int, ...]]:
    """Contiguous index → panoptic category id: the JSON's category order (None without categories)."""
    return tuple(int(c["id"]) for c in pan_cats) if pan_cats else None


def thing_flags(pan_cats: Sequence[Mapping], num_classes: int) -> tuple[bool, ...]:
    """Thing flag per contiguous class; every class is a thing without a panoptic JSON."""
    return tuple(bool(c["isthing"]) for c in pan_cats) if pan_cats else (True,) * num_classes


def instance_ids(
    pan_cats: Sequence[Mapping],
    num_classes: int,
    instance_gt: Optional[dict],
    instances_json: Optional[Path],
    pan_json: Optional[Path],
) -> tuple[tuple[Optional[int], ...], list[dict]]:
    """Contiguous index → instance category id (None for stuff), and the instance categories.

    With an instance JSON: the panoptic id of each thing class (its ids must be panoptic ids), or,
    without a panoptic JSON, the ``i``-th smallest instance category id. Without one (Cityscapes):
    the thing classes of the panoptic JSON.
    """
    pan_ids = panoptic_ids(pan_cats)
    is_thing = thing_flags(pan_cats, num_classes)
    if instance_gt is None:  # derived from the panoptic annotation (Cityscapes)
        assert pan_ids is not None
        ids = tuple(pid if thing else None for pid, thing in zip(pan_ids, is_thing))
        return ids, [{"id": int(c["id"]), "name": str(c.get("name", ""))} for c in pan_cats if c["isthing"]]
    gt_ids = [int(c["id"]) for c in instance_gt["categories"]]
    if pan_ids is not None:
        unknown = sorted(set(gt_ids) - set(pan_ids))
        if unknown:
            raise ValueError(f"{instances_json} has category ids {unknown[:5]} that {pan_json} does not list")
        ids = tuple(pid if thing else None for pid, thing in zip(pan_ids, is_thing))
    else:
        if len(gt_ids) != num_classes:
            raise ValueError(
                f"the vocabulary has {num_classes} classes but {instances_json} lists {len(gt_ids)} categories"
            )
        ids = tuple(sorted(gt_ids))
    return ids, list(instance_gt["categories"])
