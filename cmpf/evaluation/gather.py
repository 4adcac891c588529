"""Distributed evaluation (``torchrun``): sharding, failure propagation, gather to rank 0 and merge.

Each rank segments a contiguous shard of the images (detectron2's ``InferenceSampler``); per-image
panoptic counts, instance results and the rank's semantic confusion matrix are gathered to rank 0
and merged in image order, so any number of ranks gives bit-identical metrics.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from cmpf.distributed import dist_info
from cmpf.evaluation.instance import InstanceAccumulator
from cmpf.evaluation.panoptic import PanopticAccumulator
from cmpf.evaluation.prepare import PreparedDataset
from cmpf.evaluation.semantic import SemanticAccumulator


def shard(num: int, rank: int, world: int) -> range:
    """Contiguous shard of ``range(num)`` for ``rank`` (detectron2's ``InferenceSampler``)."""
    size = (num - 1) // world + 1 if num else 0
    return range(min(size * rank, num), min(size * (rank + 1), num))


def raise_if_any_failed(error: Optional[tuple[bool, str]]) -> None:
    """Every rank learns whether any rank failed (``(expected, message)``), so none waits forever in the
    gather; all raise the first failure, as ``ValueError`` when it was an expected input error."""
    rank, world = dist_info()
    errors: list = [None] * world
    dist.all_gather_object(errors, error)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        r, (expected, message) = failed[0]
        message = message if r == rank else f"rank {r}: {message}"
        raise ValueError(message) if expected else RuntimeError(message)


def gather_to_main(obj: Any) -> Optional[list]:
    """Every rank's ``obj``, in rank order, on rank 0; None on the other ranks."""
    rank, world = dist_info()
    if world == 1:
        return [obj]
    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def reduce_payloads(data: PreparedDataset, payloads: Sequence[dict]) -> dict[str, Any]:
    """Merge the per-rank payloads (any split of the images) into the metrics, in image order."""
    records = sorted((r for p in payloads for r in p["records"]), key=lambda r: r["index"])
    results: dict[str, Any] = {}
    if "panoptic" in data.tasks:
        acc = PanopticAccumulator(data.panoptic_categories)
        for rec in records:
            acc.add_counts(rec["panoptic"], num_images=1)
        results["panoptic"] = acc.result()
    if "semantic" in data.tasks:
        sem = SemanticAccumulator(len(data.vocabulary), data.spec.ignore_label)
        for p in payloads:
            matrix, n = p["semantic"]
            sem.conf_matrix += matrix
            sem.num_images += n
        results["semantic"] = sem.result()
    if "instance" in data.tasks:
        inst = InstanceAccumulator(_instance_ground_truth(data, records))
        inst.add([pred for rec in records for pred in rec["instances"]])
        results["instance"] = inst.result()
    return results


def _instance_ground_truth(data: PreparedDataset, records: Sequence[dict]) -> dict:
    """The instance GT restricted to the evaluated images (detectron2 passes ``img_ids``)."""
    if data.instance_gt is None:
        images, anns = [], []
        for rec in records:
            images.append(rec["instance_gt"]["image"])
            for a in rec["instance_gt"]["annotations"]:
                anns.append({**a, "id": len(anns) + 1})
        return {"images": images, "annotations": anns, "categories": data.instance_categories}
    done = {data.samples[rec["index"]].instance_image_id for rec in records}
    gt = data.instance_gt
    return {
        "images": [img for img in gt["images"] if img["id"] in done],
        # LVIS annotations have no iscrowd; pycocotools needs it
        "annotations": [{"iscrowd": 0, **a} for a in gt["annotations"] if a["image_id"] in done],
        "categories": list(gt["categories"]),
    }
