"""Shared helpers for the Triton kernels: lazy import, availability, launch context.

Nothing here imports triton or queries a device at import time; ``import_triton`` is called by each
kernel module the first time one of its Triton paths is used.
"""

from __future__ import annotations

import contextlib
import os
from types import ModuleType

import torch


def is_triton_available() -> bool:
    """True when ``import triton`` succeeds (it may still lack a GPU backend; see ``check_device``)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def import_triton() -> tuple[ModuleType, ModuleType]:
    """Return ``(triton, triton.language)`` or raise an ImportError that says what to do."""
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:  # pragma: no cover - exercised by the import-hygiene tests
        raise ImportError(
            "the Triton kernels need the `triton` package (pip install triton); "
            "use impl='torch' for the reference path"
        ) from exc
    return triton, tl


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on the CPU through numpy)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(*tensors: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors under the interpreter; all on one device."""
    device = tensors[0].device
    assert all(t.device == device for t in tensors), "all tensors must be on the same device"
    if device.type == "cuda":
        return
    assert interpreting(), f"Triton kernels need CUDA tensors (got {device}); set TRITON_INTERPRET=1 to run them on CPU"


def launch_context(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """``torch.cuda.device(t.device)`` for CUDA tensors, a no-op for the interpreter's CPU tensors."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
