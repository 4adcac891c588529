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

PathLike = str | os.PathLike


class MetricsInputError(ValueError):
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


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy scalars to Python numbers and non-finite floats to ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "item"):  # numpy scalar
        obj = obj.item()
    if isinstance(obj, float):
        return finite_or_none(obj)
    return obj


def write_json_atomic(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically: a temporary file in the target directory, then ``os.replace``.

    Args:
        path: destination file; missing parent directories are created.
        obj: a JSON-serialisable value; NaN / infinity become ``null``.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(to_jsonable(obj), f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
