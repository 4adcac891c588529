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
    OPENVINO = "openvino"  # OpenVINO runtime reading the same ONNX files
    TENSORRT = "tensorrt"  # engines written by `cmpf build`
    ONNXRUNTIME_TENSORRT = "onnxruntime-tensorrt"  # ONNX Runtime's TensorRT execution provider
    TORCH_TENSORRT = "torch-tensorrt"  # Torch-TensorRT programs written by `cmpf build --route torch-tensorrt`

    @property
    def format(self) -> Optional[str]:
        """The artifact file format this backend runs (None: the eager model)."""
        return {"onnxruntime": "onnx", "aoti": "aoti", "openvino": "onnx", "tensorrt": "engine",
                "onnxruntime-tensorrt": "onnx", "torch-tensorrt": "torchtrt"}.get(self.value)

    @staticmethod
    def parse(name: "str | Backend") -> "Backend":
        if isinstance(name, Backend):
            return name
        try:
            return Backend(name)
        except ValueError:
            raise InputError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}") from None

    def __str__(self) -> str:
        return self.value


BACKEND_NAMES = tuple(b.value for b in Backend)
