"""One error family for every command, and the one table of exit codes.

Library code raises these (never prints usage or calls ``sys.exit``); the CLI edge
(``cmpf.cli.main``) prints the one-line message and exits with the error's code. Each message
names the input and the fix.
"""

from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1  # a check ran and failed (parity out of tolerance, a gate breached)
    BAD_INPUT = 2  # an input, option or file the user gave cannot be used
    ENVIRONMENT = 3  # a missing dependency or device, an OS resource (disk full, permissions)
    INTERRUPTED = 130


class CmpfError(Exception):
    """Base of cmpf's expected errors; ``exit_code`` is what the CLI exits with.

    Args:
        message: one sentence naming the input and the fix (the CLI prints it as the last line).
        details: optional lines printed *before* that line (e.g. a checkpoint's weight report).
    """

    exit_code: ExitCode = ExitCode.BAD_INPUT

    def __init__(self, message: str = "", *args, details: str | None = None):
        super().__init__(message, *args)
        self.details = details

    def __str__(self) -> str:  # the message alone, also when extra args were given
        return str(self.args[0]) if self.args else ""


class InputError(CmpfError, ValueError):
    """A bad input: image, vocabulary, checkpoint, artifact, dataset, option combination."""

    exit_code = ExitCode.BAD_INPUT


class EnvironmentProblem(CmpfError):
    """Something this machine lacks: an optional package, a device, disk space, permissions."""

    exit_code = ExitCode.ENVIRONMENT


class MissingDependency(EnvironmentProblem, ImportError):
    """An optional package is not installed; the message names the pip extra."""


class CheckFailed(CmpfError):
    """A check ran to completion and its result is a failure."""

    exit_code = ExitCode.CHECK_FAILED


def require(module: str, extra: str, purpose: str):
    """Import ``module`` or raise ``MissingDependency`` naming ``pip install 'cmpf[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise MissingDependency(f"{purpose} needs {module}, which is not installed; "
                                f"pip install 'cmpf[{extra}]'") from None


_OS_FIXES = {
    errno.ENOSPC: "the disk is full; free space or choose another --out",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose another --out",
    errno.EFBIG: "the file is larger than this system allows (file-size limit); raise the limit or choose "
                 "another --out",
    errno.EACCES: "permission denied; choose a directory you can write",
    errno.EPERM: "operation not permitted; choose a directory you can write",
    errno.EROFS: "the file system is read-only; choose another --out",
    errno.EISDIR: "a directory stands where a file is to be written; remove it or choose another --out",
    errno.ENOTDIR: "a path component is a file, not a directory; choose another --out",
    errno.EEXIST: "a file stands where a directory is to be made; remove it or choose another --out",
}


def describe_os_error(e: OSError) -> CmpfError:
    """The ``CmpfError`` for an ``OSError`` from writing or reading files (one line, with the fix)."""
    if isinstance(e, CmpfError):
        return e
    if e.errno is None:  # raised by code with a message of its own (e.g. FileNotFoundError("... missing"))
        return InputError(str(e))
    where = e.filename if e.filename is not None else "a file"
    fix = _OS_FIXES.get(e.errno)
    if fix is None:
        if e.errno == errno.ENOENT:
            return InputError(f"{where}: no such file or directory")
        return EnvironmentProblem(f"{where}: {e.strerror or e}")
    cls = EnvironmentProblem if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS) else InputError
    return cls(f"{where}: {fix}")
