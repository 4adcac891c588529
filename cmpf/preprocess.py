"""Preprocessing shared by every backend: image loading, official resize, the two normalised copies.

image file → uint8 (3, H0, W0) RGB → ResizeShortestEdge (Pillow bilinear on uint8, exactly
detectron2's test mapper) → float (3, H, W) → CLIP copy: normalised, zero-padded to /32;
SAM copy: SAM-normalised, zero-padded to /32, bilinearly warped to 1024×1024 (MODEL_SPEC.md §1).
The resize is the one step done with Pillow: torch's bilinear differs by 1 grey level in ~18% of
pixels, which moves the outputs far past 1e-4 (MODEL_SPEC.md §1.1).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from cmpf.config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, SAM_PIXEL_MEAN, SAM_PIXEL_STD
from cmpf.errors import InputError


DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's decompression-bomb limit (~9459²)
MIN_SIDE = 4  # pixels; below, the /32 padding is over 98% of the CLIP input and results are noise
MAX_ASPECT = 64  # long side / short side; beyond, the official resize leaves a short side of < 21 pixels
_PIL_LIMIT_LOCK = threading.Lock()  # Pillow's limit is a module global: set it for one open at a time


class ImageError(InputError):
    """An input image that cannot be used, with the reason."""


def check_image_size(h: int, w: int, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse sizes the model cannot use (too small, too elongated) or too large to decode safely."""
    if h * w > max_pixels:
        raise ImageError(f"{name}: {w}x{h} is {h * w:,} pixels, above the limit of {max_pixels:,} (a possible "
                         f"decompression bomb); pass --max-pixels {h * w} if you trust the file")
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{name}: {w}x{h} is too small; images need at least {MIN_SIDE} pixels on each side")
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise ImageError(f"{name}: {w}x{h} has an aspect ratio of {max(h, w) / min(h, w):.0f}:1, above the "
                         f"limit of {MAX_ASPECT}:1; crop or pad it first")


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    """Convert where it is safe (grayscale, palette, 16-bit grayscale, RGBA / LA without their alpha, CMYK)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("1", "L", "P", "CMYK", "YCbCr"):
        return img.convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.float64)
        scale = 257.0 if arr.max() > 255 else 1.0  # 16-bit range → 8-bit
        if arr.max() > 65535 or arr.min() < 0:
            raise ImageError(f"{name}: 32-bit integer pixels are not supported")
        return Image.fromarray(np.clip(np.round(arr / scale), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        # the colour channels as stored, alpha dropped: what detectron2's read_image gives the official
        # model (PIL's convert), so a translucent image segments as it does there
        return img.convert("RGB")
    raise ImageError(f"{name}: unsupported pixel format {img.mode!r}")


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Read an image file as uint8 (3, H, W) RGB; raise ``ImageError`` naming the problem.

    The size is checked from the header, before any pixel is decoded (``check_image_size``).
    Animated files give their first frame; the EXIF orientation is applied (as detectron2 does).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file" if not path.is_dir() else f"{path}: a directory, not an image")
    try:
        with _PIL_LIMIT_LOCK:
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # ours is checked instead
            try:
                with Image.open(path) as img:
                    check_image_size(img.height, img.width, str(path), max_pixels)
                    img.load()
                    # detectron2's read_image applies the EXIF orientation
                    rgb = _to_rgb(ImageOps.exif_transpose(img), str(path))
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, EOFError) as e:  # Pillow reports some malformed headers as SyntaxError
        raise ImageError(f"{path}: unreadable or truncated image ({' '.join(str(e).split())})") from None
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def resized_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape``."""
    scale = short * 1.0 / min(h, w)
    newh, neww = (short * 1.0, scale * w) if h < w else (scale * h, short * 1.0)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_shortest_edge(image: torch.Tensor, short: int, max_size: int) -> torch.Tensor:
    """uint8 (3, H0, W0) → uint8 (3, H, W), Pillow bilinear (bit-exact with the official mapper)."""
    check_image_size(image.shape[-2], image.shape[-1], f"input image {tuple(image.shape)}", max_pixels=1 << 62)
    h, w = resized_shape(image.shape[1], image.shape[2], short, max_size)
    if (h, w) == tuple(image.shape[1:]):
        return image
    pil = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    out = np.asarray(pil.resize((w, h), Image.BILINEAR))
    return torch.from_numpy(out.copy()).permute(2, 0, 1).contiguous()


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x.float() - m) / s


def normalize_clip(x: torch.Tensor) -> torch.Tensor:
    return _normalize(x, CLIP_PIXEL_MEAN, CLIP_PIXEL_STD)


def normalize_sam(x: torch.Tensor) -> torch.Tensor:
    return _normalize(x, SAM_PIXEL_MEAN, SAM_PIXEL_STD)


def pad_batch(images: list[torch.Tensor], divisibility: int) -> torch.Tensor:
    """detectron2 ``ImageList.from_tensors``: zero-pad bottom/right to a common /divisibility size."""
    h = max(i.shape[-2] for i in images)
    w = max(i.shape[-1] for i in images)
    h, w = -(-h // divisibility) * divisibility, -(-w // divisibility) * divisibility
    out = images[0].new_zeros(len(images), images[0].shape[0], h, w)
    for i, img in enumerate(images):
        out[i, :, : img.shape[-2], : img.shape[-1]] = img
    return out


@dataclass(frozen=True)
class ModelInputs:
    clip_pixels: torch.Tensor  # (B, 3, Hp, Wp) float32
    sam_pixels: torch.Tensor  # (B, 3, S, S) float32
    image_sizes: tuple[tuple[int, int], ...]  # (H, W) of each resized image inside the padding


def prepare_inputs(images: list[torch.Tensor], *, divisibility: int = 32, sam_size: int = 1024,
                   device: torch.device | str = "cpu") -> ModelInputs:
    """Resized images (3, H, W) uint8 or float 0-255 → the CLIP and SAM input tensors."""
    for img in images:
        check_image_size(img.shape[-2], img.shape[-1], f"input image {tuple(img.shape)}", max_pixels=1 << 62)
    images = [img.to(device) for img in images]
    clip = pad_batch([normalize_clip(i) for i in images], divisibility)
    sam = pad_batch([normalize_sam(i) for i in images], divisibility)
    sam = F.interpolate(sam, size=(sam_size, sam_size), mode="bilinear", align_corners=False)
    return ModelInputs(clip, sam, tuple((int(i.shape[-2]), int(i.shape[-1])) for i in images))
