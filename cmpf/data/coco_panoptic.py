"""COCO-panoptic reader: annotation JSON + RGB-encoded PNGs → per-image training targets.

Consumes the standard on-disk COCO-panoptic layout (an image directory, a directory of panoptic
PNGs whose pixels encode a segment id as ``R + 256·G + 256²·B``, and the annotation JSON). Produces,
per image, a uint8 RGB image (3, H, W), ``labels`` (N,) int64 contiguous class indices and
``masks`` (N, H, W) bool, one per non-crowd segment (the official
``COCOPanopticNewBaselineDatasetMapper`` semantics). Category ids map to contiguous indices in the
order the JSON lists its categories; crowd segments are dropped and images left without a segment
are filtered out when the records are read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cmpf.codecs import id2rgb, rgb2id  # noqa: F401 (re-exported; id 0 is void)

# An augmentation maps (image (H, W, 3) uint8, panoptic RGB (H, W, 3) uint8, rng) to the same pair.
PanopticTransform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
SampleKey = Union[int, tuple[int, int]]


@dataclass(frozen=True)
class PanopticSegment:
    """One annotated segment: its id in the PNG, contiguous class index, crowd flag."""

    id: int
    label: int
    iscrowd: bool


@dataclass(frozen=True)
class PanopticRecord:
    """One image of a COCO-panoptic set, as listed in the annotation JSON."""

    image_id: Union[int, str]
    image_path: str
    panoptic_path: str
    segments: tuple[PanopticSegment, ...]


@dataclass(frozen=True)
class PanopticCategories:
    """The JSON's categories in file order; index i is contiguous class i."""

    ids: tuple[int, ...]
    names: tuple[str, ...]
    isthing: tuple[bool, ...]

    @property
    def id_to_index(self) -> dict[int, int]:
        return {cid: i for i, cid in enumerate(self.ids)}


def read_categories(json_info: dict[str, Any]) -> PanopticCategories:
    """Contiguous categories from a parsed COCO-panoptic JSON (file order)."""
    cats = json_info["categories"]
    return PanopticCategories(
        ids=tuple(int(c["id"]) for c in cats),
        names=tuple(str(c["name"]) for c in cats),
        isthing=tuple(bool(c.get("isthing", 0)) for c in cats),
    )


def load_coco_panoptic_json(
    json_path: Union[str, os.PathLike],
    image_dir: Union[str, os.PathLike],
    panoptic_dir: Union[str, os.PathLike],
    *,
    drop_crowd: bool = True,
    filter_empty: bool = True,
) -> tuple[list[PanopticRecord], PanopticCategories]:
    """Read a COCO-panoptic annotation file.

    The image file name comes from the JSON ``images`` entry of each annotation (COCO names its
    images ``*.jpg`` and its PNGs ``*.png``).

    Args:
        json_path: the panoptic annotation JSON.
        image_dir: directory of the RGB images.
        panoptic_dir: directory of the panoptic PNGs.
        drop_crowd: remove ``iscrowd`` segments (training semantics).
        filter_empty: skip images left with no segment.
    Returns:
        The records in JSON order and the contiguous categories.
    """
    with open(json_path) as f:
        info = json.load(f)
    categories = read_categories(info)
    id_to_index = categories.id_to_index
    image_files = {img["id"]: img["file_name"] for img in info.get("images", [])}
    records = []
    for ann in info["annotations"]:
        segments = tuple(
            PanopticSegment(int(s["id"]), id_to_index[int(s["category_id"])], bool(s.get("iscrowd", 0)))
            for s in ann["segments_info"]
        )
        if drop_crowd:
            segments = tuple(s for s in segments if not s.iscrowd)
        if filter_empty and not segments:
            continue
        image_file = image_files.get(ann["image_id"], os.path.splitext(ann["file_name"])[0] + ".jpg")
        records.append(
            PanopticRecord(
                image_id=ann["image_id"],
                image_path=os.path.join(image_dir, image_file),
                panoptic_path=os.path.join(panoptic_dir, ann["file_name"]),
                segments=segments,
            )
        )
    return records, categories


def read_rgb(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def panoptic_targets(
    panoptic_rgb: np.ndarray, segments: Sequence[PanopticSegment]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-segment labels and binary masks from a panoptic PNG.

    Args:
        panoptic_rgb: (H, W, 3) uint8 encoded segment ids.
        segments: the segments to keep (crowd already removed for training).
    Returns:
        labels (N,) int64 and masks (N, H, W) bool. A segment absent from the PNG (for example
        cropped away by an augmentation) still yields an all-False mask, as in the official mapper.
    """
    ids = rgb2id(panoptic_rgb)
    h, w = ids.shape
    if not segments:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, h, w, dtype=torch.bool)
    seg_ids = np.array([s.id for s in segments], dtype=np.int64)
    masks = ids[None] == seg_ids[:, None, None]
    labels = torch.tensor([s.label for s in segments], dtype=torch.int64)
    return labels, torch.from_numpy(masks)


class CocoPanopticDataset(Dataset):
    """A COCO-panoptic set as a map-style ``Dataset``.

    Indexing with ``i`` reads record ``i`` without randomness; indexing with ``(i, aug_seed)`` (what
    :class:`cmpf.data.ShardSampler` yields) runs the transform with a generator seeded by
    ``aug_seed``, so augmentations do not depend on worker processes and a resumed run replays them.

    Each item is a dict: ``image`` (3, H, W) uint8 RGB, ``labels`` (N,) int64, ``masks`` (N, H, W)
    bool and ``image_id``.
    """

    def __init__(
        self,
        records: Sequence[PanopticRecord],
        categories: PanopticCategories,
        transform: Optional[PanopticTransform] = None,
    ) -> None:
        self.records = list(records)
        self.categories = categories
        self.transform = transform

    @classmethod
    def from_files(
        cls,
        json_path: Union[str, os.PathLike],
        image_dir: Union[str, os.PathLike],
        panoptic_dir: Union[str, os.PathLike],
        transform: Optional[PanopticTransform] = None,
    ) -> CocoPanopticDataset:
        """Training view of a panoptic set: crowd dropped, empty images filtered."""
        records, categories = load_coco_panoptic_json(json_path, image_dir, panoptic_dir)
        if not records:
            raise ValueError(f"{json_path} lists no image with a non-crowd segment")
        return cls(records, categories, transform)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.categories.names

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        index, aug_seed = key if isinstance(key, tuple) else (key, key)
        record = self.records[index]
        image = read_rgb(record.image_path)
        panoptic = read_rgb(record.panoptic_path)
        if image.shape[:2] != panoptic.shape[:2]:
            raise ValueError(
                f"{record.image_path} is {image.shape[:2]} but {record.panoptic_path} is {panoptic.shape[:2]}"
            )
        if self.transform is not None:
            image, panoptic = self.transform(image, panoptic, np.random.default_rng(aug_seed))
        labels, masks = panoptic_targets(panoptic, record.segments)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "labels": labels,
            "masks": masks,
            "image_id": record.image_id,
        }


def collate_panoptic(batch: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """DataLoader collate function for same-size samples (LSJ output).

    Returns:
        images (B, 3, S, S) uint8 and one target dict per image (``labels``, ``masks``,
        ``image_id``).
    """
    sizes = {tuple(b["image"].shape) for b in batch}
    if len(sizes) != 1:
        raise ValueError(f"collate_panoptic needs same-size images (use an LSJ transform), got {sorted(sizes)}")
    images = torch.stack([b["image"] for b in batch])
    targets = [{k: v for k, v in b.items() if k != "image"} for b in batch]
    return images, targets
