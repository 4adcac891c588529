"""Synthetic COCO-panoptic sets written to disk, for tests and smoke runs (no downloads).

Produces the real COCO layout under ``root/coco``: ``{split}/*.jpg|png`` images,
``panoptic_{split}/*.png`` panoptic PNGs, ``annotations/panoptic_{split}.json``, plus the semantic
PNGs (``panoptic_semseg_{split}``, contiguous ids, 255 = void) and a COCO instances JSON
(``annotations/instances_{split}.json``, RLE masks of thing segments) that evaluation uses.

Each image has one or two stuff regions (horizontal bands) and a few thing instances drawn as
rectangles or ellipses; every class has its own colour and thing shape so a model can learn them.
Crowd regions, void pixels and, at the end of the set, crowd-only images (no usable segment) are
included so readers exercise their filtering. Everything is deterministic given the seed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

import numpy as np
from PIL import Image

from cmpf.codecs import encode_rle, id2rgb, mask_bbox


@dataclass(frozen=True)
class SyntheticClass:
    """One category of the synthetic set."""

    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]
    shape: Literal["rectangle", "ellipse", "band"]


# Deliberately interleaved things and stuff with non-contiguous ids: readers must map the ids to
# contiguous indices in this (file) order.
SYNTHETIC_CLASSES: tuple[SyntheticClass, ...] = (
    SyntheticClass(1, "red box", True, (220, 40, 40), "rectangle"),
    SyntheticClass(7, "sky", False, (120, 180, 240), "band"),
    SyntheticClass(3, "blue ball", True, (40, 60, 220), "ellipse"),
    SyntheticClass(12, "grass", False, (60, 150, 60), "band"),
    SyntheticClass(5, "yellow box", True, (235, 210, 40), "rectangle"),
    SyntheticClass(20, "wall", False, (150, 120, 100), "band"),
    SyntheticClass(9, "white ball", True, (245, 245, 245), "ellipse"),
)


@dataclass(frozen=True)
class SyntheticSet:
    """Paths and vocabulary of a generated set."""

    root: Path
    split: str
    json_path: Path
    image_dir: Path
    panoptic_dir: Path
    semantic_dir: Path
    instances_json: Path
    class_names: tuple[str, ...]
    num_images: int


def _shape_mask(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random rectangle or ellipse covering 15-45 % of the short side, as (H, W) bool."""
    side = min(h, w)
    bh, bw = (rng.uniform(0.15, 0.45, size=2) * side).astype(int) + 2
    cy, cx = rng.integers(0, h), rng.integers(0, w)
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "rectangle":
        return (np.abs(yy - cy) <= bh // 2) & (np.abs(xx - cx) <= bw // 2)
    return ((yy - cy) / (bh / 2)) ** 2 + ((xx - cx) / (bw / 2)) ** 2 <= 1.0


def _draw_layout(
    h: int, w: int, rng: np.random.Generator, *, crowd: bool, void: bool, crowd_only: bool
) -> tuple[np.ndarray, list[tuple[int, bool]]]:
    """Paint class indices into an (H, W) map; returns it and the (class index, iscrowd) of each layer.

    Layer k is painted with value k + 1; 0 is void.
    """
    things = [i for i, c in enumerate(SYNTHETIC_CLASSES) if c.isthing]
    stuff = [i for i, c in enumerate(SYNTHETIC_CLASSES) if not c.isthing]
    layers: list[tuple[int, bool]] = []
    canvas = np.zeros((h, w), dtype=np.int64)
    if not crowd_only:
        top, bottom = rng.choice(stuff, size=2, replace=False)
        split = int(rng.uniform(0.3, 0.7) * h) if rng.uniform() < 0.7 else h
        layers.append((int(top), False))
        canvas[:split] = len(layers)
        if split < h:
            layers.append((int(bottom), False))
            canvas[split:] = len(layers)
        for _ in range(int(rng.integers(1, 4))):
            cls = int(rng.choice(things))
            layers.append((cls, False))
            canvas[_shape_mask(SYNTHETIC_CLASSES[cls].shape, h, w, rng)] = len(layers)
    if crowd or crowd_only:
        cls = int(rng.choice(things))
        layers.append((cls, True))
        canvas[_shape_mask(SYNTHETIC_CLASSES[cls].shape, h, w, rng)] = len(layers)
    if void:
        width = max(w // 10, 1)
        x0 = int(rng.integers(0, w - width + 1))
        canvas[:, x0 : x0 + width] = 0
    return canvas, layers


def _render(canvas: np.ndarray, layers: list[tuple[int, bool]], rng: np.random.Generator) -> np.ndarray:
    """Colour each layer with its class colour (+ per-image jitter and pixel noise): (H, W, 3) uint8."""
    h, w = canvas.shape
    image = rng.normal(40.0, 20.0, size=(h, w, 3))  # void: dark noise
    for k, (cls, _) in enumerate(layers, start=1):
        color = np.asarray(SYNTHETIC_CLASSES[cls].color, dtype=np.float64) + rng.uniform(-15, 15, size=3)
        region = canvas == k
        image[region] = color + rng.normal(0.0, 6.0, size=(int(region.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _unique_segment_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct ids in [1, 2^24 - 1), spread over all three PNG channels."""
    while True:
        ids = rng.integers(1, 2**24 - 1, size=n)
        if len(set(ids.tolist())) == n:
            return ids


def _instance_annotation(mask: np.ndarray, ann_id: int, image_id: int, category_id: int, iscrowd: bool) -> dict:
    rle = encode_rle(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle,
        "area": int(mask.sum()),
        "bbox": mask_bbox(mask),
        "iscrowd": int(iscrowd),
    }


def _annotate(
    canvas: np.ndarray, layers: list[tuple[int, bool]], segment_ids: np.ndarray, image_id: int, first_ann_id: int
) -> tuple[np.ndarray, list[dict], list[dict]]:
    """Semantic map (H, W) uint8 (255 = void), panoptic ``segments_info`` and instance annotations."""
    semantic = np.full(canvas.shape, 255, dtype=np.uint8)
    segments, instances = [], []
    for k, ((cls, crowd), seg_id) in enumerate(zip(layers, segment_ids), start=1):
        mask = canvas == k
        if not mask.any():  # fully occluded
            continue
        category = SYNTHETIC_CLASSES[cls]
        semantic[mask] = cls
        segments.append(
            {"id": int(seg_id), "category_id": category.id, "iscrowd": int(crowd), "area": int(mask.sum()),
             "bbox": mask_bbox(mask)}
        )  # fmt: skip
        if category.isthing:
            ann_id = first_ann_id + len(instances)
            instances.append(_instance_annotation(mask, ann_id, image_id, category.id, crowd))
    return semantic, segments, instances


def make_synthetic_coco_panoptic(
    root: Union[str, os.PathLike],
    num_images: int,
    size: Union[int, tuple[int, int]] = 128,
    seed: int = 0,
    *,
    split: str = "train2017",
    image_format: Literal["jpg", "png"] = "jpg",
    num_crowd_only: int = 1,
) -> SyntheticSet:
    """Write a synthetic COCO-panoptic split under ``root/coco``.

    Args:
        root: datasets root; files go to ``root/coco/...`` (the registry's COCO layout).
        num_images: number of images, including the crowd-only ones.
        size: image size, an int (square) or (H, W).
        seed: all randomness derives from it.
        split: split name (``train2017``, ``val2017``).
        image_format: ``jpg`` (as COCO) or ``png`` (lossless, exact pixels).
        num_crowd_only: the last images of the set have only crowd and void pixels.
    Returns:
        The paths and class names of the written split.
    """
    h, w = (size, size) if isinstance(size, int) else size
    coco = Path(root) / "coco"
    out = SyntheticSet(
        root=Path(root),
        split=split,
        json_path=coco / "annotations" / f"panoptic_{split}.json",
        image_dir=coco / split,
        panoptic_dir=coco / f"panoptic_{split}",
        semantic_dir=coco / f"panoptic_semseg_{split}",
        instances_json=coco / "annotations" / f"instances_{split}.json",
        class_names=tuple(c.name for c in SYNTHETIC_CLASSES),
        num_images=num_images,
    )
    for d in (out.json_path.parent, out.image_dir, out.panoptic_dir, out.semantic_dir):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations, instances = [], [], []
    for i in range(num_images):
        image_id, stem = i + 1, f"{i + 1:012d}"
        canvas, layers = _draw_layout(
            h, w, rng, crowd=i % 3 == 1, void=i % 2 == 0, crowd_only=i >= num_images - num_crowd_only
        )
        segment_ids = _unique_segment_ids(len(layers), rng)
        ids = np.concatenate([[0], segment_ids])[canvas]  # layer k -> its segment id, 0 stays void
        semantic, segments, things = _annotate(canvas, layers, segment_ids, image_id, len(instances) + 1)
        instances += things
        file_name = f"{stem}.{image_format}"
        Image.fromarray(_render(canvas, layers, rng)).save(out.image_dir / file_name, quality=95)
        Image.fromarray(id2rgb(ids)).save(out.panoptic_dir / f"{stem}.png")
        Image.fromarray(semantic).save(out.semantic_dir / f"{stem}.png")
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        annotations.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments})
    categories = [
        {"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color)} for c in SYNTHETIC_CLASSES
    ]
    with open(out.json_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    thing_categories = [
        {"id": c["id"], "name": c["name"], "supercategory": "thing"} for c in categories if c["isthing"]
    ]
    with open(out.instances_json, "w") as f:
        json.dump({"images": images, "annotations": instances, "categories": thing_categories}, f)
    return out
