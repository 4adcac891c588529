"""``torch.export`` program → AOTInductor package ``<graph>.<precision>.pt2`` (written atomically).

The package holds the compiled kernels for the device the program was exported on (CPU here,
CUDA on a GPU machine) and keeps the program's dynamic dims. Load it in Python with
``torch._inductor.aoti_load_package`` (``cmpf.runtime.aoti_runner``) or in C++ with
``torch::inductor::AOTIModelPackageLoader`` (``examples/aoti_cpp``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch.export import ExportedProgram


def export_aoti(program: ExportedProgram, path: str | Path) -> Path:
    """Compile ``program`` with AOTInductor into the package ``path`` (suffix ``.pt2``)."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"AOTInductor packages end with .pt2, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staged = Path(tmp) / path.name
        torch._inductor.aoti_compile_and_package(program, package_path=str(staged))
        os.replace(staged, path)
    return path


def program_device(program: ExportedProgram) -> str:
    """Device type of the program's weights and buffers ("cpu" or "cuda")."""
    for t in list(program.state_dict.values()) + list(program.constants.values()):
        if isinstance(t, torch.Tensor):
            return t.device.type
    return "cpu"
