"""Large-scale jitter (LSJ), the official COCO-panoptic training augmentation.

Consumes an RGB image (H, W, 3) uint8 and its panoptic PNG (H, W, 3) uint8; produces both at
(S, S). The steps follow detectron2's ``RandomFlip`` → ``ResizeScale`` → ``FixedSizeCrop`` as
configured by FrozenSeg / FC-CLIP (``coco_panoptic_new_baseline_dataset_mapper.py``):

1. horizontal flip with probability 0.5;
2. a scale r ~ U(min_scale, max_scale) of the target size: the image is resized (Pillow bilinear;
   the panoptic PNG nearest) by ``min(r·S / h, r·S / w)``, the new size rounded to integers;
3. a random S×S crop (one uniform draw times the maximal offset on both axes, rounded), then
   bottom/right padding to S×S with 128 for the image and 255 for the PNG. Every PNG channel
   padded with 255 decodes to id 2^24 − 1, which names no segment, so masks are False there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class LSJConfig:
    """LSJ parameters (official: 1024, 0.1, 2.0, flip 0.5, pads 128 / 255)."""

    image_size: int = 1024
    min_scale: float = 0.1
    max_scale: float = 2.0
    flip_prob: float = 0.5
    image_pad_value: int = 128
    seg_pad_value: int = 255

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ValueError("image_size must be positive")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError("need 0 < min_scale <= max_scale")


def resize_scale_size(height: int, width: int, scale: float, target: int) -> tuple[int, int]:
    """Output (H, W) of detectron2 ``ResizeScale`` for a square target and scale factor r."""
    output_scale = min(scale * target / height, scale * target / width)
    new_h, new_w = np.round(np.multiply((height, width), output_scale)).astype(int)
    return max(int(new_h), 1), max(int(new_w), 1)


def fixed_size_crop_offset(height: int, width: int, crop: int, u: float) -> tuple[int, int]:
    """Top-left (y0, x0) of detectron2 ``FixedSizeCrop`` given its uniform draw ``u`` in [0, 1)."""
    max_offset = np.maximum(np.subtract((height, width), crop), 0)
    y0, x0 = np.round(max_offset * u).astype(int)
    return int(y0), int(x0)


def _resize(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    height, width = size
    return np.asarray(Image.fromarray(array).resize((width, height), resample))


def _pad(array: np.ndarray, size: int, value: int) -> np.ndarray:
    h, w = array.shape[:2]
    out = np.full((size, size, array.shape[2]), value, dtype=array.dtype)
    out[:h, :w] = array
    return out


class LargeScaleJitter:
    """Callable LSJ transform: ``(image, panoptic_rgb, rng) -> (image, panoptic_rgb)``.

    Args:
        cfg: the LSJ parameters.

    Inputs are (H, W, 3) uint8 arrays of the same size; outputs are (S, S, 3) uint8.
    """

    def __init__(self, cfg: LSJConfig = LSJConfig()) -> None:
        self.cfg = cfg

    def __call__(
        self, image: np.ndarray, panoptic: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        if rng.uniform() < cfg.flip_prob:
            image, panoptic = image[:, ::-1], panoptic[:, ::-1]
        scale = rng.uniform(cfg.min_scale, cfg.max_scale)
        size = resize_scale_size(image.shape[0], image.shape[1], scale, cfg.image_size)
        image = _resize(np.ascontiguousarray(image), size, Image.Resampling.BILINEAR)
        panoptic = _resize(np.ascontiguousarray(panoptic), size, Image.Resampling.NEAREST)
        y0, x0 = fixed_size_crop_offset(size[0], size[1], cfg.image_size, rng.uniform())
        window = (slice(y0, y0 + cfg.image_size), slice(x0, x0 + cfg.image_size))
        image = _pad(image[window], cfg.image_size, cfg.image_pad_value)
        panoptic = _pad(panoptic[window], cfg.image_size, cfg.seg_pad_value)
        return image, panoptic
