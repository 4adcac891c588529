"""Runners: one graph each, named torch tensors in and out (``cmpf.runtime.base.Runner``).

``load_runner(backend, artifact, device)`` is an explicit ``match`` with a local import per branch,
so ``import cmpf.runtime`` needs neither onnxruntime nor the model code; ``load_runners`` opens
every graph of an artifact directory for one backend. Only the torch runner imports the model.
"""

from __future__ import annotations

import torch

from cmpf.backend import Backend
from cmpf.errors import require
from cmpf.manifest import Artifact, ArtifactError, Manifest
from cmpf.runtime.base import Runner


def load_runner(backend: str | Backend, artifact: Artifact, device: str | torch.device = "cpu") -> Runner:
    """A runner for one verified graph file (``Manifest.artifact``).

    For ``torch``, any file of the graph will do: the eager model is rebuilt from the manifest's
    config and recorded weights.
    """
    backend = Backend.parse(backend)
    if backend.format is not None and artifact.format != backend.format:
        raise ArtifactError(f"{artifact.path}: a {artifact.format} file cannot run on the {backend} backend "
                            f"(it needs {backend.format})")
    match backend:
        case Backend.ONNXRUNTIME:
            require("onnxruntime", "onnx", "the onnxruntime backend")
            from cmpf.runtime.onnxruntime_runner import OnnxRuntimeRunner

            return OnnxRuntimeRunner(artifact.path, artifact.graph, device)
        case Backend.AOTI:
            from cmpf.runtime.aoti_runner import AotiRunner

            if torch.device(device).type != artifact.device:
                raise ArtifactError(f"{artifact.path}: compiled for {artifact.device}, asked to run on {device}; "
                                    f"re-export on that device: `{artifact.manifest.command} --device "
                                    f"{torch.device(device).type}`")
            return AotiRunner(artifact.path, artifact.graph, device)
        case Backend.TORCH:
            from cmpf.runtime.torch_runner import TorchRunner, model_from_manifest

            return TorchRunner(model_from_manifest(artifact.manifest, device), artifact.graph.name)


def load_runners(manifest: Manifest, backend: str | Backend,
                 device: str | torch.device = "cpu") -> dict[str, Runner]:
    """Runners for every graph of an artifact directory (all of the model's graphs must be there)."""
    backend = Backend.parse(backend)
    manifest.require_all_graphs()  # before loading anything
    if backend is Backend.TORCH:
        from cmpf.runtime.torch_runner import model_from_manifest, torch_runners

        return torch_runners(model_from_manifest(manifest, device))
    return {g: load_runner(backend, manifest.artifact(g, backend.format), device) for g in manifest.graphs}


__all__ = ["ArtifactError", "Artifact", "Runner", "load_runner", "load_runners"]
