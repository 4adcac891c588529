"""Fusioner's training crop and augmentation (FUSIONER_SPEC §8) on ``torchvision.transforms.v2``.

Consumes one training episode (an (H, W, 3) uint8 image, its (H, W) bool target and ignore masks) and a
``torch.Generator``; produces the (S, S, 3) uint8 crop that ``normalise`` takes, and the two (S, S) bool
masks. The official pipeline is albumentations 1.1.0 (``FU:dataset/resize_crop.py:18-34``,
``FU:dataset/augumenter.py:19-41``), which is not installed here; each step below is the torchvision
transform with the parameters converted to the same effect:

1. crop, ``A.OneOf`` at 0.5 each (``v2.RandomChoice``):
   - ``RandomResizedCrop(S, scale=(0.5, 1), ratio=(3/4, 4/3))``: same sampling (10 tries, then the whole
     image with the ratio clamped, centred); ``antialias=False`` as cv2's INTER_LINEAR.
   - ``SmallestMaxSize(S)`` → ``RandomCrop(S)`` = ``v2.Resize(S)`` → ``v2.RandomCrop(S)``. Difference: the
     long side is ``int(S * long / short)`` in torchvision, ``round(...)`` in albumentations (≤ 1 px).
2. ``A.Compose(p=0.5)`` (``v2.RandomApply(p=0.5)``) over, in order, each at p = 0.5:
   - ``ColorJitter(j, j, j, j)``, j = 0.5 PASCAL / 0.2 COCO: the same factors (brightness, contrast,
     saturation in [1 - j, 1 + j], hue in [-j, j] of the full turn) in a random order, on uint8.
   - ``GaussNoise(var_limit=(10, 50))``: albumentations draws a variance in 0..255² units per call;
     torchvision's ``GaussianNoise`` takes a fixed sigma in 0..1 units, so ``_GaussNoise`` draws the
     variance and calls ``v2.functional.gaussian_noise`` with ``sigma = sqrt(var) / 255``. Difference:
     the noise is truncated to int16 before the add (albumentations adds in float, then truncates).
   - ``HorizontalFlip`` = ``v2.RandomHorizontalFlip``.
   - ``ElasticTransform(alpha=1, sigma=50, alpha_affine=20)``: albumentations first warps by the affine
     that moves three points around the centre (±min(H, W) // 3) by uniform(±alpha_affine) px each
     (``_AlphaAffine``: the same points, given as a parallelogram to ``v2.functional.perspective``, which
     for four affine-consistent points is that affine), then displaces by ``alpha · blur(U(-1, 1), sigma)``
     px. torchvision's displacement is ``alpha · blur / size`` in [-1, 1] grid units, i.e. half as many
     pixels, hence ``v2.ElasticTransform(alpha=2 · 1, sigma=50)``. At these settings the displacement is
     ~0.003 px (a 50-px blur of uniform noise), so this step is in effect the random affine.
     Differences: the blur's border is reflect (scipy's is symmetric), immaterial at 0.003 px; the centre
     is (W // 2, H // 2) where albumentations takes (H // 2, W // 2) as (x, y), the same on the square crop;
     ColorJitter's hue works in float here, on uint8 HSV (0..180) in albumentations.
   - ``ShiftScaleRotate(0.1, 0.1, 20 PASCAL / 10 COCO)`` = ``v2.RandomAffine(degrees, translate=(0.1, 0.1),
     scale=(0.9, 1.1), bilinear)``. Differences: torchvision rounds the shift to whole pixels and rotates
     about (W / 2, H / 2) rather than cv2's (W / 2 - 0.5, H / 2 - 0.5).
   Every geometric step fills the border with 0 for the image and the mask alike: border = background,
   not ignore. The mask is one ``tv_tensors.Mask`` (0 background, 1 target, 255 ignore), so torchvision
   resamples it with nearest neighbour and it stays {0, 1, 255}-valued and aligned with the image.

Only training calls this (``cmpf.fusioner.train``); evaluation reads images untouched. Randomness:
torchvision's transforms draw from torch's global generator, so ``augment_episode`` draws one seed from
the given generator and runs the transforms under ``torch.random.fork_rng`` with it: the same
generator state gives the same result, whatever else uses the global generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

FOREGROUND, IGNORE = 1, 255  # the values of the combined mask


@dataclass(frozen=True)
class AugmentParams:
    """The per-dataset parameters of the augmentation block (``FU:dataset/augumenter.py``)."""

    color_jitter: float  # brightness = contrast = saturation = hue
    rotate: float  # ShiftScaleRotate's rotate_limit, degrees
    var_limit: tuple[float, float] = (10.0, 50.0)  # GaussNoise, variance in 0..255² units
    elastic_alpha: float = 1.0  # albumentations units (px)
    elastic_sigma: float = 50.0
    alpha_affine: float = 20.0  # px
    shift: float = 0.1  # fraction of the side
    scale: float = 0.1  # ± around 1
    p: float = 0.5  # of the block and of each step in it


AUGMENT = {"pascal-5i": AugmentParams(color_jitter=0.5, rotate=20.0),
           "coco-20i": AugmentParams(color_jitter=0.2, rotate=10.0)}


class _GaussNoise(v2.Transform):
    """albumentations ``GaussNoise(var_limit)``: a variance drawn per call, then torchvision's kernel."""

    def __init__(self, var_limit: tuple[float, float]) -> None:
        super().__init__()
        self.var_limit = var_limit

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        var = float(torch.empty(()).uniform_(*self.var_limit))
        return {"sigma": var ** 0.5 / 255.0}  # torchvision's sigma is on the 0..1 scale, uint8 included

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # masks pass through (no kernel)
        return self._call_kernel(TF.gaussian_noise, inpt, mean=0.0, sigma=params["sigma"], clip=True)


class _AlphaAffine(v2.Transform):
    """The random affine of albumentations 1.1.0 ``ElasticTransform(alpha_affine)``, fill 0.

    Three points (centre ± side // 3) each moved by uniform(±alpha_affine) px per coordinate; the fourth
    corner of their parallelogram follows, so ``perspective`` applies exactly that affine.
    """

    def __init__(self, alpha_affine: float) -> None:
        super().__init__()
        self.alpha_affine = alpha_affine

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        cx, cy, s = w // 2, h // 2, min(h, w) // 3
        start = torch.tensor([[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]], dtype=torch.float64)
        end = start + torch.empty(3, 2, dtype=torch.float64).uniform_(-self.alpha_affine, self.alpha_affine)
        start, end = (torch.cat([p, p[:1] + p[2:] - p[1:2]]).tolist() for p in (start, end))
        return {"startpoints": start, "endpoints": end}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.perspective, inpt, params["startpoints"], params["endpoints"],
                                 interpolation=v2.InterpolationMode.BILINEAR, fill=0)


class _ElasticTransform(v2.ElasticTransform):
    """``v2.ElasticTransform`` with its Gaussian blur done as two 1-D passes: the same kernel (torchvision's
    2-D kernel is the outer product of the 1-D ones, reflect padding is per axis) and the same draws, but
    O(k) per pixel instead of O(k²): at sigma 50 the kernel is 401 px, 8 s → 0.05 s per 224² field."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        fields = []
        for axis, side in ((0, width), (1, height)):  # dx, then dy, as torchvision draws them
            d = torch.rand(1, 1, height, width) * 2 - 1
            sigma = self.sigma[axis]
            if sigma > 0.0:
                k = int(8 * sigma + 1) | 1  # torchvision's size, made odd
                d = TF.gaussian_blur(TF.gaussian_blur(d, [k, 1], [sigma, sigma]), [1, k], [sigma, sigma])
            fields.append(d * self.alpha[axis] / side)
        return {"displacement": torch.concat(fields, 1).permute([0, 2, 3, 1])}  # 1 x H x W x 2


def crop_transform(size: int) -> v2.Transform:
    """``A.OneOf([RandomResizedCrop, SmallestMaxSize → RandomCrop])`` at 0.5 each."""
    return v2.RandomChoice([
        v2.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), antialias=False),
        v2.Compose([v2.Resize(size, antialias=False), v2.RandomCrop(size)]),
    ])


def augment_transform(params: AugmentParams) -> v2.Transform:
    """The ``A.Compose(p=0.5)`` block: colour, noise, flip, elastic, shift-scale-rotate, each at ``params.p``."""
    j, p = params.color_jitter, params.p
    return v2.RandomApply([
        v2.RandomApply([v2.ColorJitter(j, j, j, j)], p=p),
        v2.RandomApply([_GaussNoise(params.var_limit)], p=p),
        v2.RandomHorizontalFlip(p=p),
        v2.RandomApply([_AlphaAffine(params.alpha_affine),
                        _ElasticTransform(alpha=2.0 * params.elastic_alpha, sigma=params.elastic_sigma, fill=0)],
                       p=p),
        v2.RandomApply([v2.RandomAffine(params.rotate, translate=(params.shift, params.shift),
                                        scale=(1 - params.scale, 1 + params.scale),
                                        interpolation=v2.InterpolationMode.BILINEAR, fill=0)], p=p),
    ], p=p)


def training_transform(dataset: str, size: int = 224, augment: bool = True) -> v2.Transform:
    """The crop, then (``augment``) the dataset's augmentation block."""
    if not augment:
        return crop_transform(size)
    return v2.Compose([crop_transform(size), augment_transform(AUGMENT[dataset])])


def augment_episode(transform: v2.Transform, image: np.ndarray, target: np.ndarray, ignore: np.ndarray,
                    generator: torch.Generator) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 and two (H, W) bool → (S, S, 3) uint8 and two (S, S) bool, drawn from ``generator``."""
    pixels = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))  # a writable copy
    labels = np.where(ignore, IGNORE, np.where(target, FOREGROUND, 0)).astype(np.uint8)
    mask = tv_tensors.Mask(torch.from_numpy(labels))
    seed = int(torch.randint(0, 2 ** 62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pixels, mask = transform(pixels, mask)
    mask = mask.as_subclass(torch.Tensor)
    return pixels.as_subclass(torch.Tensor).permute(1, 2, 0).numpy(), mask == FOREGROUND, mask == IGNORE
