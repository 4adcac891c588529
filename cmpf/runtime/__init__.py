"""Runners: one graph each, named torch tensors in and out (``cmpf.runtime.base.Runner``).

``load_runner(backend, artifact, device)`` is an explicit ``match`` with a local import per branch,
so ``import cmpf.runtime`` needs neither onnxruntime nor the model code; ``load_runners`` opens
every graph of an artifact directory for one backend. Only the torch runner imports the model.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from cmpf.backend import Backend
from cmpf.cpu import WITHOUT_INT8_UNITS, cpu_info
from cmpf.errors import require
from cmpf.manifest import Artifact, ArtifactError, Manifest, parse_precision, variant_key
from cmpf.runtime.base import Runner


# precisions a backend applies itself, to the fp32 files or to files of that precision (OpenVINO's bf16 hint
# also runs `cmpf quantize`'s bf16 files)
RUNTIME_PRECISIONS: dict[Backend, tuple[str, ...]] = {Backend.OPENVINO: ("bf16",)}


def load_runner(backend: str | Backend, artifact: Artifact, device: str | torch.device = "cpu",
                precision: Optional[str] = None) -> Runner:
    """A runner for one verified graph file (``Manifest.artifact``, of any precision).

    For ``torch``, any file of the graph will do: the eager model is rebuilt from the manifest's
    config and recorded weights. ``precision``: one of ``RUNTIME_PRECISIONS[backend]`` to run the
    file at (OpenVINO's inference-precision hint, on an fp32 or bf16 file).
    """
    backend = Backend.parse(backend)
    if precision is not None and precision not in RUNTIME_PRECISIONS.get(backend, ()):
        raise ArtifactError(f"the {backend} backend runs {artifact.precision} files as they are, not at {precision}")
    if backend.format is not None and artifact.format != backend.format:
        raise ArtifactError(f"{artifact.path}: a {artifact.format} file cannot run on the {backend} backend "
                            f"(it needs {backend.format})")
    match backend:
        case Backend.ONNXRUNTIME:
            require("onnxruntime", "onnx", "the onnxruntime backend")
            if artifact.precision == "bf16" and torch.device(device).type == "cpu":
                raise ArtifactError(f"{artifact.path.name}: ONNX Runtime's CPU provider has no bf16 kernels for "
                                    f"these graphs; run the bf16 files with --backend openvino, or build them for "
                                    f"TensorRT with `cmpf build --artifacts {artifact.manifest.directory} "
                                    f"--precision bf16`")
            from cmpf.runtime.onnxruntime_runner import OnnxRuntimeRunner, session_options

            options = None
            if (artifact.recipe or {}).get("onnxruntime_optimization") == "layout":  # cmpf.precision.api
                import onnxruntime as ort

                options = session_options()
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT
            return OnnxRuntimeRunner(artifact.path, artifact.graph, device, options=options)
        case Backend.AOTI:
            from cmpf.runtime.aoti_runner import AotiRunner

            if torch.device(device).type != artifact.device:
                raise ArtifactError(f"{artifact.path}: compiled for {artifact.device}, asked to run on {device}; "
                                    f"re-export on that device: `{artifact.manifest.command} --device "
                                    f"{torch.device(device).type}`")
            return AotiRunner(artifact.path, artifact.graph, device)
        case Backend.OPENVINO:
            require("openvino", "openvino", "the openvino backend")
            from cmpf.runtime.openvino_runner import OpenVinoRunner

            if precision is None and artifact.precision == "int8":  # the ops between the Q/DQ pairs in bf16
                precision = "auto"  # where the CPU has bf16 kernels (OpenVinoRunner)
            return OpenVinoRunner(artifact.path, artifact.graph, device, inference_precision=precision)
        case Backend.TENSORRT:
            require("tensorrt", "trt", "the tensorrt backend")
            from cmpf.runtime.tensorrt_runner import TensorRTRunner

            return TensorRTRunner(artifact, device)
        case Backend.ONNXRUNTIME_TENSORRT:
            require("onnxruntime", "onnx", "the onnxruntime-tensorrt backend")
            from cmpf.runtime.ort_tensorrt_runner import OrtTensorRTRunner

            return OrtTensorRTRunner(artifact, device)
        case Backend.TORCH_TENSORRT:
            require("torch_tensorrt", "trt", "the torch-tensorrt backend")
            from cmpf.runtime.torch_tensorrt_runner import TorchTensorRTRunner

            return TorchTensorRTRunner(artifact, device)
        case Backend.TORCH:
            from cmpf.runtime.torch_runner import TorchRunner, model_from_manifest

            return TorchRunner(model_from_manifest(artifact.manifest, device), artifact.graph.name)


def load_runners(manifest: Manifest, backend: str | Backend, device: str | torch.device = "cpu",
                 precision: Optional[str] = None) -> dict[str, Runner]:
    """Runners for every graph of an artifact directory (all of the model's graphs must be there).

    Args:
        precision: ``--precision``: ``int8`` (that precision wherever a graph has it, fp32 elsewhere) or
            ``sam_image_encoder=int8,decoder=fp16`` (exact); None: fp32 (``Manifest.runtime_plan``).
    """
    backend = Backend.parse(backend)
    manifest.require_all_graphs()  # before loading anything
    if backend is Backend.TORCH:
        if precision and set(parse_precision(precision, manifest.graphs).values()) != {"fp32"}:
            raise ArtifactError(f"--precision {precision}: the torch backend runs the fp32 eager model; run the "
                                f"reduced-precision files with --backend onnxruntime or openvino")
        from cmpf.runtime.torch_runner import model_from_manifest, torch_runners

        return torch_runners(model_from_manifest(manifest, device))
    applied = RUNTIME_PRECISIONS.get(backend, ())
    plan = manifest.runtime_plan(backend.format, precision, runtime=applied)
    if backend in (Backend.ONNXRUNTIME, Backend.OPENVINO) and _full_range_int8(manifest, backend.format, plan):
        _warn_without_int8_units(device)
    runners = {}
    for graph, p in plan.items():
        if p in applied:  # the backend runs at p itself: a p file where `cmpf quantize` wrote one, else fp32
            file = p if p in manifest.precisions(graph, backend.format) else "fp32"
            runners[graph] = load_runner(backend, manifest.artifact(graph, backend.format, file), device, p)
        else:
            runners[graph] = load_runner(backend, manifest.artifact(graph, backend.format, p), device)
    return runners


def _full_range_int8(manifest: Manifest, fmt: str, plan: dict[str, str]) -> bool:
    """Whether the plan runs an int8 file with 8-bit weights (not ``cmpf quantize --reduce-range``'s 7-bit ones)."""
    files = [manifest.graphs[g].files.get(variant_key(fmt, p)) for g, p in plan.items() if p == "int8"]
    return any(f is not None and (f.recipe or {}).get("weight_bits", 8) == 8 for f in files)


def _warn_without_int8_units(device: str | torch.device) -> None:
    """One line when int8 files with 8-bit weights are about to run on a CPU without int8 dot-product units."""
    cpu = cpu_info()
    if torch.device(device).type == "cpu" and cpu.int8_dot_products is False:
        warnings.warn(f"--precision int8 on {cpu.model}: {WITHOUT_INT8_UNITS} (`cmpf doctor` lists the CPU's units)",
                      stacklevel=3)


__all__ = ["ArtifactError", "Artifact", "Runner", "load_runner", "load_runners"]
