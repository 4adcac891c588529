"""Pictures of a segmentation for people: the class palette, the colour map and the labelled overlay.

Consumes a uint8 (3, H, W) RGB image and regions (N, H, W) bool with their class indices; produces
(H', W', 3) uint8 RGB arrays. The overlay is what segmentation tools show (torchvision's
``draw_segmentation_masks``, detectron2's visualizer): every region tinted in its own colour (the
class colour; instances of one class in lighter and darker shades of it), outlined, labelled with
its class name where it is large enough to hold one, and a legend beside the image that lists every
class found with its colour and count. Small images are enlarged (nearest neighbour) so the labels
stay readable. Torch and torchvision only; nothing here knows about models or files.
"""

from __future__ import annotations

import colorsys
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Kelly's colours of maximum contrast (without black and white), then a golden-ratio walk over hues.
_KELLY = ((255, 179, 0), (128, 62, 117), (255, 104, 0), (166, 189, 215), (193, 0, 32), (206, 162, 98),
          (129, 112, 102), (0, 125, 52), (246, 118, 142), (0, 83, 138), (255, 122, 92), (83, 55, 122),
          (255, 142, 0), (179, 40, 81), (244, 200, 0), (127, 24, 13), (147, 170, 0), (89, 51, 21),
          (241, 58, 19), (35, 44, 22))
MIN_OVERLAY_SIDE = 384  # smaller images are enlarged by an integer factor until the short side reaches it
LEGEND_WIDTH = 220
ALPHA = 0.55  # opacity of the tint


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8: the colour of class index 0 … n-1, the same in every picture and palette PNG."""
    colours = list(_KELLY[:n])
    for i in range(len(colours), n):
        hue = (i * 0.618033988749895) % 1.0
        colours.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.65 + 0.35 * (i % 2), 0.95)))
    return np.asarray(colours, dtype=np.uint8).reshape(-1, 3)


def color_map(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W) class indices → (H, W, 3) uint8 in the class colours."""
    return colours[labels]


def _shade(colour: np.ndarray, k: int) -> tuple[int, int, int]:
    """The k-th instance of a class: the class colour, then alternately lighter and darker."""
    if k == 0:
        return tuple(int(c) for c in colour)
    step = (k + 1) // 2 * 0.22
    target = 255.0 if k % 2 else 0.0
    return tuple(int(round(c + (target - c) * min(step, 0.66))) for c in colour)


def _outlines(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool → (N, H, W) bool: the pixels of each region with a neighbour outside it."""
    m = masks.float()[:, None]
    inner = -F.max_pool2d(-m, kernel_size=3, stride=1, padding=1)  # erosion
    return ((m - inner) > 0)[:, 0]


def _contrast(colour: tuple[int, int, int]) -> int:
    """Black on light colours, white on dark ones (Rec. 601 luma)."""
    return 0 if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 160 else 255


@lru_cache(maxsize=4)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # FreeType builds of Pillow: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def overlay(image: torch.Tensor, masks: torch.Tensor, classes: Sequence[int], class_names: Sequence[str],
            colours: np.ndarray) -> np.ndarray:
    """The labelled overlay: image + tinted, outlined, named regions + a legend on the right.

    Args:
        image: (3, H, W) uint8 RGB.
        masks: (N, H, W) bool regions (panoptic segments; N may be 0).
        classes: the class index of each region (into ``class_names`` and ``colours``).
        class_names: display names of the vocabulary.
        colours: (K, 3) uint8 class colours (``palette``).
    Returns:
        (H', W' + LEGEND_WIDTH, 3) uint8, H' = H × s, W' = W × s for the enlargement factor s ≥ 1.
    """
    from PIL import Image, ImageDraw
    from torchvision.ops import masks_to_boxes
    from torchvision.utils import draw_segmentation_masks

    h, w = image.shape[-2:]
    scale = max(1, -(-MIN_OVERLAY_SIDE // min(h, w)))
    image = image.cpu()
    masks = masks.cpu().bool()
    if scale > 1:
        image = image.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        masks = masks.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    seen: dict[int, int] = {}
    region_colours = []
    for c in classes:
        region_colours.append(_shade(colours[c], seen.get(c, 0)))
        seen[c] = seen.get(c, 0) + 1
    picture = image
    if len(classes):
        picture = draw_segmentation_masks(image, masks, alpha=ALPHA, colors=region_colours)
        for outline, colour in zip(_outlines(masks), region_colours):
            picture[:, outline] = _contrast(colour)
    canvas = Image.new("RGB", (picture.shape[2] + LEGEND_WIDTH, max(picture.shape[1], 40 + 22 * len(seen))),
                       (30, 30, 30))
    canvas.paste(Image.fromarray(picture.permute(1, 2, 0).numpy()), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    if len(classes):
        boxes = masks_to_boxes(masks).round().int().tolist()
        areas = masks.flatten(1).sum(1).tolist()
        for box, area, c in zip(boxes, areas, classes):
            if area < 0.004 * masks.shape[1] * masks.shape[2]:
                continue  # too small to carry a label; the legend still counts it
            _label(draw, (box[0] + 3, box[1] + 3), class_names[c], font)
    _legend(draw, (picture.shape[2] + 12, 10), seen, class_names, colours, font)
    return np.asarray(canvas)


def _label(draw, xy: tuple[int, int], text: str, font) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255), font=font)


def _legend(draw, xy: tuple[int, int], counts: dict[int, int], class_names: Sequence[str], colours: np.ndarray,
            font) -> None:
    x, y = xy
    if not counts:
        draw.text((x, y), "nothing found", fill=(230, 230, 230), font=font)
        return
    draw.text((x, y), f"{sum(counts.values())} segments", fill=(230, 230, 230), font=font)
    for c in sorted(counts):
        y += 22
        draw.rectangle((x, y, x + 14, y + 14), fill=tuple(int(v) for v in colours[c]), outline=(255, 255, 255))
        name = class_names[c] if counts[c] == 1 else f"{class_names[c]} ×{counts[c]}"
        draw.text((x + 22, y), name, fill=(230, 230, 230), font=font)
