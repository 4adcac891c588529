"""Shared I/O for ``cmpf metrics``: input errors, JSON reading, atomic JSON writing and text tables.

Every metric result is a plain dict of percentages; a value the reference implementation leaves
undefined (NaN) is ``None`` here and ``null`` in the written JSON.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from cmpf.errors import InputError
from cmpf.io import write_json

PathLike = str | os.PathLike


class MetricsInputError(InputError):
    """Bad metric input: a missing or malformed file, or data that violates the format's rules."""


def load_json(path: PathLike, what: str) -> Any:
    """Read one JSON file, turning I/O and parse failures into :class:`MetricsInputError`.

    Args:
        path: the file to read.
        what: a short description of the file for the message (``"ground-truth JSON"``).

    Returns:
        The decoded JSON value.
    """
    path = Path(path)
    if not path.is_file():
        raise MetricsInputError(f"{what} {str(path)!r} does not exist or is not a file")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise MetricsInputError(f"{what} {str(path)!r} is not valid JSON: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise MetricsInputError(f"cannot read {what} {str(path)!r}: {e}") from e


def require_dir(path: PathLike, what: str) -> Path:
    """Return ``path`` as a :class:`Path`, raising :class:`MetricsInputError` if it is not a directory."""
    path = Path(path)
    if not path.is_dir():
        raise MetricsInputError(f"{what} {str(path)!r} does not exist or is not a directory")
    return path


def finite_or_none(value: Any) -> Optional[float]:
    """``float(value)``, or ``None`` for NaN / infinity / ``None``."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else "-"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """Render a plain-text table; floats with 3 decimals, ``None`` as ``-``.

    Args:
        headers: column names, length C.
        rows: R rows of C values each.
        title: optional line printed above the table.

    Returns:
        The table as a string without a trailing newline.
    """
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    # text columns (and the first) left-aligned, numbers right-aligned
    left = [i == 0 or any(isinstance(r[i], str) for r in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return " | ".join(v.ljust(w) if lf else v.rjust(w) for v, w, lf in zip(values, widths, left))

    out = [title] if title else []
    out.append(line(list(headers)))
    out.append("-+-".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def format_panoptic(result: Mapping[str, Any], names: Optional[Mapping[int, str]] = None) -> str:
    """Summary (All / Things / Stuff) and per-class tables of an ``evaluate_panoptic`` result."""
    names = names or {}
    summary = [
        [k, result[k]["pq"], result[k]["sq"], result[k]["rq"], result[k]["n"]]
        for k in ("All", "Things", "Stuff")
    ]
    per_class = [
        [cid, names.get(int(cid), ""), v["pq"], v["sq"], v["rq"]]
        for cid, v in result["per_class"].items()
    ]
    return "\n\n".join(
        [
            format_table(["", "PQ", "SQ", "RQ", "N"], summary, "Panoptic quality (%)"),
            format_table(["id", "name", "PQ", "SQ", "RQ"], per_class, "Per class (%)"),
        ]
    )


def format_semantic(result: Mapping[str, Any]) -> str:
    """Summary and per-class tables of an ``evaluate_semantic`` result."""
    summary = [[result["mIoU"], result["fwIoU"], result["mACC"], result["pACC"]]]
    per_class = [[c, result["IoU"][c], result["ACC"][c]] for c in result["IoU"]]
    return "\n\n".join(
        [
            format_table(["mIoU", "fwIoU", "mACC", "pACC"], summary, "Semantic segmentation (%)"),
            format_table(["class", "IoU", "ACC"], per_class, "Per class (%)"),
        ]
    )


def format_instance(result: Mapping[str, Any], names: Optional[Mapping[int, str]] = None) -> str:
    """Summary and per-class tables of an ``evaluate_instance`` result."""
    names = names or {}
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    per_class = [[cid, names.get(int(cid), ""), ap] for cid, ap in result["per_class"].items()]
    return "\n\n".join(
        [
            format_table(list(keys), [[result[k] for k in keys]], "Instance segmentation, segm (%)"),
            format_table(["id", "name", "AP"], per_class, "Per class AP (%)"),
        ]
    )
