"""Writing files: atomically (temp file + rename) and with the permissions a normal write gives.

Every file cmpf writes goes through ``atomic_write``: the content is written to a temporary file
in the target directory and renamed onto the target only when complete, so an interrupted write
never leaves a half-written file. The temporary file is given the mode ``open()`` would have
created (0666 minus the umask, so 0644 under umask 022), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read from /proc where available: ``os.umask`` can only be read by setting it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, mode: int = 0o666) -> Path:
    """Call ``write(tmp_path)``, give the file ``mode & ~umask``, then rename it onto ``path``.

    Missing parent directories are created; the temporary file is removed on any failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def to_jsonable(obj: Any) -> Any:
    """Recursively: numpy scalars → Python numbers, tuples → lists, NaN / infinity → None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 1) -> Path:
    """JSON, atomically; undefined values (NaN, infinity) are written as ``null``."""
    return write_text(path, json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n")


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (checkpoints, weights)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

