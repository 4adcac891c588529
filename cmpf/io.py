"""Writing files: atomically (temp file + rename) and with the permissions a normal write gives.

Every file cmpf writes goes through ``atomic_write``: the content is written to a temporary file
in the target directory and renamed onto the target only when complete, so an interrupted write
never leaves a half-written file. The temporary file is given the mode ``open()`` would have
created (0666 minus the umask, so 0644 under umask 022), not ``mkstemp``'s private 0600.

A command that writes several files (``cmpf run``, ``cmpf export``) writes them through a
``Staging``: into a temporary directory beside each destination, moved into place together only
when the whole command succeeded, so a failure leaves nothing new behind (all or nothing).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from cmpf.errors import EnvironmentProblem, InputError

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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and (e.filename is None or e.filename == tmp):
            e.filename = str(path)  # name the file being written, not its temporary twin
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

    def save(tmp: str) -> None:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch's zip writer reports a failed write (EFBIG, ENOSPC) so
            reason = (str(e).strip().splitlines() or [""])[0]
            raise OSError(errno.EIO, f"writing failed, the disk may be full or a file-size limit reached "
                                     f"({reason})", str(path)) from e

    return atomic_write(path, save)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()



# -- checks of output paths, before anything is computed -----------------------------------------------
def _first_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _check_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` is a directory this process can write."""
    ancestor = _first_existing(path.parent)
    if not ancestor.is_dir():
        raise InputError(f"{flag} {path}: {ancestor} is a file, not a directory; choose another {flag}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {ancestor} (permission denied); choose a directory "
                         f"you can write")


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an output directory that is a file, lies under a file or cannot be written."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a directory; remove it or choose another {flag}")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {path}: cannot write in it (permission denied); choose a directory you "
                             f"can write")
        return path
    _check_parent(path, flag)
    return path


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Refuse an output file name taken by a directory, under a file, or in a directory not writable."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path} is a directory; give a file name")
    _check_parent(path, flag)
    if path.parent.is_dir() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {path.parent} (permission denied)")
    return path


# -- all-or-nothing writing of several files ----------------------------------------------------------
_STAGING = ".cmpf-staging-"


def _remove_stale(parent: Path, name: str) -> None:
    """Staging directories of ``name`` left by killed processes (their pid is gone)."""
    pattern = re.compile(re.escape(f".{name}{_STAGING}") + r"(\d+)-")
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        m = pattern.match(entry.name)
        if m and entry.is_dir() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Staging:
    """Write files beside their destinations, move them into place together on success.

    ``directory(out)`` gives a temporary directory beside ``out`` whose files end up in ``out``;
    ``file(path)`` a temporary path beside ``path``. Leaving the ``with`` block normally moves
    every staged file into place (``last`` names at the end: a manifest that vouches for the rest);
    an exception removes every staged file and every directory made for them, so nothing new
    remains. An ``OSError`` leaving the block names the destination, not the temporary path.
    """

    def __init__(self, *, last: Sequence[str] = ()):
        self.last = tuple(last)
        self.roots: list[tuple[Path, Path]] = []  # (staged directory, destination directory)
        self.made: list[Path] = []  # directories created for the destinations (removed on failure)
        self.committed: list[Path] = []

    def __enter__(self) -> "Staging":
        return self

    def directory(self, out: str | os.PathLike, flag: str = "--out") -> Path:
        out = check_output_dir(out, flag)
        return self._stage(out, out.parent, out.name)

    def file(self, path: str | os.PathLike, flag: str) -> Path:
        path = check_output_file(path, flag)
        return self._stage(path.parent, path.parent, path.name) / path.name

    def _stage(self, dest: Path, parent: Path, name: str) -> Path:
        self._make_dirs(parent)
        _remove_stale(parent, name)
        try:
            staged = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}{_STAGING}{os.getpid()}-"))
        except PermissionError:
            if not dest.is_dir():
                raise
            # --out is writable but its parent is not: stage inside --out itself (same file system)
            staged = Path(tempfile.mkdtemp(dir=dest, prefix=f"{_STAGING}{os.getpid()}-"))
        self.roots.append((staged, dest))
        return staged

    def _make_dirs(self, directory: Path) -> None:
        missing = []
        while not os.path.lexists(directory) and directory != directory.parent:
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            d.mkdir()
            self.made.append(d)

    def destination(self, staged: str | os.PathLike) -> Path:
        """The final path of a staged path (unchanged when it is not staged)."""
        staged = Path(staged)
        for root, dest in self.roots:
            if staged == root or root in staged.parents:
                return dest / staged.relative_to(root)
        return staged

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            try:
                self.commit()
                return
            except BaseException as e:
                self._rename_in(e)
                self.abort()
                raise
        self._rename_in(value)
        self.abort()

    def _rename_in(self, e: Optional[BaseException]) -> None:
        if isinstance(e, OSError) and e.filename is not None:
            e.filename = str(self.destination(e.filename))

    def _moves(self) -> list[tuple[Path, Path]]:
        moves = []
        for root, dest in self.roots:
            for staged in sorted(p for p in root.rglob("*") if p.is_file()):
                moves.append((staged, dest / staged.relative_to(root)))
        return sorted(moves, key=lambda m: m[1].name in self.last)  # stable: the rest keep their order

    def commit(self) -> list[Path]:
        """Move every staged file into place; on a failure, undo the moves of files that were new."""
        moves = self._moves()
        for _, target in moves:  # a name taken by a directory fails here, before anything moves
            if target.is_dir():
                raise InputError(f"{target} is a directory, in the way of a result file; remove it or choose "
                                 f"another --out")
        moved: list[Path] = []
        try:
            for staged, target in moves:
                self._make_dirs(target.parent)
                existed = os.path.lexists(target)
                os.replace(staged, target)
                if not existed:
                    moved.append(target)
        except BaseException:
            for target in moved:
                target.unlink(missing_ok=True)
            raise
        self.committed = [t for _, t in moves]
        self._remove_roots()
        return self.committed

    def abort(self) -> None:
        """Remove everything staged and every directory made for it."""
        self._remove_roots()
        for d in reversed(self.made):
            try:
                d.rmdir()  # only if still empty
            except OSError:
                pass
        self.made = []

    def _remove_roots(self) -> None:
        for root, _ in self.roots:
            shutil.rmtree(root, ignore_errors=True)
        self.roots = []


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip (a ``code/`` folder inside), which ``torch.load(weights_only=True)`` refuses."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
