"""The Fusioner golden of ``../shared/reference/fusioner/``: synthetic weights by its README rule, arrays, input."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import torch

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
FUSIONER = REFERENCE / "fusioner"
INPUT_IMAGE = REFERENCE / "golden" / "input_image.png"
KEYS = FUSIONER / "keys_variantA.tsv"
ARRAYS = FUSIONER / "A_cat_224.npz"
META = FUSIONER / "A_cat_224_meta.json"


def missing() -> list[str]:
    """The reference files that are absent (empty when the golden can run)."""
    return [str(p) for p in (KEYS, ARRAYS, META, INPUT_IMAGE) if not p.is_file()]


def synthetic_tensor(key: str, shape: tuple[int, ...], fill: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")) & 0x7FFFFFFF)
    r = torch.randn(shape, generator=g, dtype=torch.float32)
    if fill == "randn002":
        return r.mul_(0.02)
    if fill == "one_plus_randn002":  # every LayerNorm weight
        return r.mul_(0.02).add_(1)
    raise ValueError(f"unknown fill rule {fill!r} for {key}")


def sha256_16(t: torch.Tensor) -> str:
    """First 16 hex digits of sha256 over the C-contiguous little-endian float32 bytes."""
    a = np.ascontiguousarray(t.numpy(), dtype="<f4")  # no copy for a contiguous float32 tensor on x86
    return hashlib.sha256(memoryview(a).cast("B")).hexdigest()[:16]


def synthetic_state_dict() -> tuple[dict[str, torch.Tensor], list[str]]:
    """The 615 tensors of ``keys_variantA.tsv`` in file order, and the keys whose sha256_16 differs."""
    lines = KEYS.read_text().splitlines()
    col = {name: i for i, name in enumerate(lines[0].split("\t"))}
    state, bad = {}, []
    for line in lines[1:]:
        f = line.split("\t")
        key, shape = f[col["key"]], f[col["shape"]]
        dims = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
        state[key] = synthetic_tensor(key, dims, f[col["fill"]])
        if sha256_16(state[key]) != f[col["sha256_16"]]:
            bad.append(key)
    return state, bad


def arrays() -> dict[str, np.ndarray]:
    with np.load(ARRAYS) as z:
        return {k: z[k] for k in z.files}


def meta() -> dict:
    return json.loads(META.read_text())


def input_crop() -> np.ndarray:
    """The reference input: the centre 224×224 of input_image.png, uint8 HWC RGB, no resize."""
    from PIL import Image

    img = np.array(Image.open(INPUT_IMAGE).convert("RGB"))
    h, w = img.shape[:2]
    top, left = (h - 224) // 2, (w - 224) // 2
    return img[top:top + 224, left:left + 224]


def rel_error(a, b) -> float:
    """L2-relative error ``||a - b|| / ||b||`` in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
