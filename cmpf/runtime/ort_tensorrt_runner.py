"""ONNX Runtime's TensorRT execution provider behind the ``Runner`` protocol, for users who stay in ONNX Runtime.

Consumes a verified ONNX file of any precision (fp32, or the fp16 / int8 Q/DQ variants of
``cmpf quantize``) and torch CUDA tensors by name; produces torch CUDA tensors by name, through the
ONNX Runtime runner's I/O binding. TensorRT builds its engines on the first run of each input shape
and keeps them (and its timing cache) in an engine-cache directory beside the artifacts
(``.ort-tensorrt-cache``; under ``~/.cache/cmpf`` when that directory cannot be written); the fp16 /
int8 flags follow the file's precision, the graph's casts and Q/DQ nodes decide the types. Nodes
TensorRT cannot take fall back to CUDA, then CPU.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import onnxruntime as ort
import torch

from cmpf.errors import EnvironmentProblem, InputError
from cmpf.manifest import Artifact
from cmpf.runtime.onnxruntime_runner import OnnxRuntimeRunner

CACHE_DIR_NAME = ".ort-tensorrt-cache"


def engine_cache_dir(artifact_path: str | Path) -> Path:
    """Where ONNX Runtime keeps this directory's TensorRT engines and timing cache."""
    directory = Path(artifact_path).resolve().parent
    if os.access(directory, os.W_OK | os.X_OK):
        return directory / CACHE_DIR_NAME
    digest = hashlib.sha1(str(directory).encode()).hexdigest()[:12]
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cmpf" / "ort-tensorrt" / digest


def tensorrt_provider_options(precision: str, device_index: int, cache_dir: Path) -> dict[str, str]:
    """The TensorRT execution provider's options (strings, as ONNX Runtime takes them)."""
    flag = lambda on: "True" if on else "False"  # noqa: E731
    return {
        "device_id": str(device_index),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        # TensorRT 10 builds weakly typed networks through ONNX Runtime: these allow the reduced-precision
        # kernels the graph's fp16 casts and Q/DQ nodes ask for (TensorRT 11 is strongly typed throughout)
        "trt_fp16_enable": flag(precision == "fp16"),
        "trt_bf16_enable": flag(precision == "bf16"),
        "trt_int8_enable": flag(precision in ("int8", "fp8")),
    }


def tensorrt_providers(available: list[str], options: dict[str, str], device_index: int) -> list:
    """TensorRT first, then CUDA and CPU for the nodes TensorRT does not take."""
    if "TensorrtExecutionProvider" not in available:
        raise EnvironmentProblem(f"the onnxruntime-tensorrt backend needs ONNX Runtime's TensorrtExecutionProvider; "
                                 f"this onnxruntime offers {available} (pip install onnxruntime-gpu and TensorRT)")
    providers: list = [("TensorrtExecutionProvider", options)]
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": device_index}))
    return providers + ["CPUExecutionProvider"]


class OrtTensorRTRunner(OnnxRuntimeRunner):
    backend = "onnxruntime-tensorrt"

    def __init__(self, artifact: Artifact, device: str | torch.device = "cuda", threads: Optional[int] = None):
        """Open ``artifact`` (a verified ONNX file) with the TensorRT execution provider on the CUDA ``device``."""
        self.graph = artifact.graph
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise InputError(f"{artifact.path}: the onnxruntime-tensorrt backend runs on CUDA devices, not "
                             f"{self.device}; use --device cuda")
        index = self.device.index or 0
        cache = engine_cache_dir(artifact.path)
        cache.mkdir(parents=True, exist_ok=True)
        providers = tensorrt_providers(ort.get_available_providers(),
                                       tensorrt_provider_options(artifact.precision, index, cache), index)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(artifact.path), options, providers=providers)
        if self.session.get_providers()[0] != "TensorrtExecutionProvider":
            raise EnvironmentProblem(f"{artifact.path}: ONNX Runtime did not enable the TensorRT execution provider "
                                     f"(it chose {self.session.get_providers()}); check the TensorRT libraries it "
                                     f"loads")
        self._check_session(artifact.path)
