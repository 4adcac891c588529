"""The COCO panoptic id <-> RGB codec and COCO run-length encoding: one home for both.

Panoptic PNGs store segment ids as ``id = R + 256 G + 256² B`` (panopticapi's ``rgb2id``); instance
masks in COCO result files are RLE dicts with ASCII ``counts`` (pycocotools).
"""

from __future__ import annotations

import numpy as np

_ID_WEIGHTS = np.array([1, 256, 256 * 256], dtype=np.int64)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, C ≥ 3) uint8 RGB(A) → (H, W) int64 segment ids (an alpha channel is ignored)."""
    return np.asarray(rgb)[..., :3].astype(np.int64) @ _ID_WEIGHTS


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) int segment ids → (H, W, 3) uint8 (the inverse of :func:`rgb2id`)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool mask → COCO RLE ``{"size": [H, W], "counts": str}``."""
    return encode_rles(np.asarray(mask)[None])[0]


def encode_rles(masks: np.ndarray) -> list[dict]:
    """(N, H, W) bool masks → N COCO RLE dicts with ASCII counts."""
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks)
    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def mask_bbox(mask: np.ndarray) -> list[int]:
    """(H, W) bool mask → COCO box ``[x, y, w, h]`` in pixels (``[0, 0, 0, 0]`` for an empty mask)."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
