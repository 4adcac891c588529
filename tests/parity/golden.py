"""The golden reference of ``../shared/reference/golden/``: weights by the stated rule, arrays, stats."""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
GOLDEN = REFERENCE / "golden"
VOCABS = REFERENCE / "vocabularies"


def available() -> bool:
    return (GOLDEN / "keys_variantB.tsv").is_file() and (GOLDEN / "B_ade150_golden.npz").is_file()


def _fill(key: str, shape: tuple[int, ...], fill: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()) & 0x7FFFFFFF)
    r = torch.randn(shape, generator=g, dtype=torch.float32)
    if fill == "randn002":
        return 0.02 * r
    if fill == "one_plus_randn002":
        return 1 + 0.02 * r
    if fill == "randn1":
        return r
    if fill == "const_ln(100)":
        return torch.full(shape, math.log(100), dtype=torch.float32)
    raise ValueError(f"unknown fill rule {fill!r} for {key}")


def sha256_16(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().astype("<f4").tobytes()).hexdigest()[:16]


def golden_state_dict(check_hashes: bool = True) -> dict[str, torch.Tensor]:
    """Rebuild the 1279 tensors of ``keys_variantB.tsv`` and check each ``sha256_16``."""
    lines = (GOLDEN / "keys_variantB.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    col = {name: i for i, name in enumerate(header)}
    state = {}
    for line in lines[1:]:
        f = line.split("\t")
        shape = () if f[col["shape"]] == "scalar" else tuple(int(s) for s in f[col["shape"]].split("x"))
        t = _fill(f[col["key"]], shape, f[col["fill"]])
        if check_hashes and sha256_16(t) != f[col["sha256_16"]]:
            raise AssertionError(f"generated tensor for {f[col['key']]} does not match its sha256_16")
        state[f[col["key"]]] = t
    return state


def arrays() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "B_ade150_golden.npz") as z:
        return {k: z[k] for k in z.files}


def stats() -> dict:
    return json.loads((GOLDEN / "B_ade150_golden_stats.json").read_text())
