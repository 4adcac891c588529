"""The backends a pipeline can run on: one enum, the one list every command offers.

``torch`` is the eager reference model (from a checkpoint, or rebuilt from an artifact directory's
recorded weights); the others run the files of an artifact directory written by ``cmpf export``.
"""

from __future__ import annotations

from enum import Enum
from typing import Optional

from cmpf.errors import InputError


class Backend(str, Enum):
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    AOTI = "aoti"

    @property
    def format(self) -> Optional[str]:
        """The artifact file format this backend runs (None: the eager model)."""
        return {"onnxruntime": "onnx", "aoti": "aoti"}.get(self.value)

    @staticmethod
    def parse(name: "str | Backend") -> "Backend":
        if isinstance(name, Backend):
            return name
        try:
            return Backend(name)
        except ValueError:
            hint = (" (TensorRT engines are not built by this cmpf yet)" if name == "tensorrt" else "")
            raise InputError(f"unknown backend {name!r}{hint}; choose one of {', '.join(BACKEND_NAMES)}") from None

    def __str__(self) -> str:
        return self.value


BACKEND_NAMES = tuple(b.value for b in Backend)
