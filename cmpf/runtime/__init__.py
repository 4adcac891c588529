"""Runners: one graph each, named torch tensors in and out (``cmpf.runtime.base.Runner``).

``load_runner(backend, artifact, device)`` is an explicit ``match`` with a local import per branch,
so ``import cmpf.runtime`` needs neither onnxruntime nor the model code. ``load_artifacts`` opens
every graph of a ``cmpf export`` directory for one backend, for ``cmpf.pipeline.segment``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import torch

from cmpf.config import ModelConfig
from cmpf.runtime.artifacts import (BACKEND_FORMAT, Artifact, ArtifactError, graph_artifact, model_config,
                                    read_manifest, rebuild_command, sha256_file, verify_file)
from cmpf.runtime.base import Runner
from cmpf.spec import GraphSpec, graph_specs

BACKENDS = ("onnxruntime", "aoti", "torch")


def load_runner(backend: str, artifact: Artifact, device: str | torch.device = "cpu") -> Runner:
    """A runner for one verified graph file (``cmpf.runtime.artifacts.graph_artifact``).

    For ``torch``, any file of the graph will do: the eager model is rebuilt from the manifest's
    config and recorded weights.
    """
    if backend in BACKEND_FORMAT and artifact.format != BACKEND_FORMAT[backend]:
        raise ValueError(f"{artifact.path}: a {artifact.format} file cannot run on the {backend} backend "
                         f"(it needs {BACKEND_FORMAT[backend]})")
    match backend:
        case "onnxruntime":
            from cmpf.runtime.onnxruntime_runner import OnnxRuntimeRunner

            return OnnxRuntimeRunner(artifact.path, artifact.graph, device)
        case "aoti":
            from cmpf.runtime.aoti_runner import AotiRunner

            if torch.device(device).type != artifact.device:
                command = rebuild_command(artifact.manifest, artifact.path.parent)
                raise ArtifactError(f"{artifact.path}: compiled for {artifact.device}, asked to run on {device}; "
                                    f"re-export on that device: `{command} --device {torch.device(device).type}`")
            return AotiRunner(artifact.path, artifact.graph, device)
        case "torch":
            from cmpf.runtime.torch_runner import TorchRunner

            return TorchRunner(_checkpoint_model(artifact.manifest, artifact.path.parent, device), artifact.graph.name)
        case _:
            raise _unknown_backend(backend)


def load_artifacts(directory: str | Path, backend: str = "onnxruntime",
                   device: str | torch.device = "cpu") -> tuple[dict[str, Runner], ModelConfig]:
    """Runners for every graph of an artifact directory, and the model config they were exported from."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    cfg = model_config(manifest)
    specs = {g: GraphSpec.from_json(e["spec"]) for g, e in manifest["graphs"].items()}
    _check_specs(cfg, specs, manifest, directory)  # before loading anything
    if backend == "torch":
        from cmpf.runtime.torch_runner import torch_runners

        return torch_runners(_checkpoint_model(manifest, directory, device)), cfg
    if backend not in BACKEND_FORMAT:
        raise _unknown_backend(backend)
    fmt = BACKEND_FORMAT[backend]
    return {g: load_runner(backend, graph_artifact(directory, g, fmt, manifest), device) for g in specs}, cfg


def _unknown_backend(backend: str) -> ValueError:
    if backend == "tensorrt":
        return ValueError(f"TensorRT engines are not part of `cmpf export` artifacts; choose one of "
                          f"{', '.join(BACKENDS)}")
    return ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _check_specs(cfg: ModelConfig, specs: dict[str, GraphSpec], manifest: dict, directory: Path) -> None:
    """Every graph the pipeline needs is present, with the spec this cmpf defines for the model."""
    fix = f"re-export with `{rebuild_command(manifest, directory)}`"
    try:
        expected = graph_specs(cfg, **manifest["spec_args"])
    except (KeyError, TypeError):
        raise ArtifactError(f"{directory}: manifest lacks the spec arguments; {fix}") from None
    changed = sorted(g for g in specs if specs[g] != expected.get(g))
    if changed:
        raise ArtifactError(f"{directory}: graphs {changed} were exported with other tensor specs than this cmpf "
                            f"uses; {fix}")
    missing = sorted(set(expected) - set(specs))
    if missing:
        command = shlex.split(rebuild_command(manifest, directory))
        if "--graphs" in command:  # the pipeline needs every graph
            del command[command.index("--graphs"):command.index("--graphs") + 2]
        raise ArtifactError(f"{directory}: graphs {missing} were not exported; the pipeline needs every graph: "
                            f"`{shlex.join(command)}`")


def _checkpoint_model(manifest: dict, directory: Path, device):
    """The eager model of an export: the manifest's config with its recorded checkpoint."""
    ckpt = manifest.get("checkpoint")
    fix = f"re-export with `{rebuild_command(manifest, directory)}`"
    if not ckpt:
        raise ArtifactError(f"{directory}: no weights recorded in the manifest, so the torch backend cannot rebuild "
                            f"the model; use --backend onnxruntime|aoti, or {fix} --checkpoint CKPT")
    path = Path(ckpt["path"])
    if not path.is_absolute():
        path = verify_file(directory, ckpt["path"], manifest)
    elif not path.is_file():
        raise ArtifactError(f"{path}: checkpoint recorded in {directory}/manifest.json is missing; {fix}")
    elif sha256_file(path) != ckpt["sha256"]:
        raise ArtifactError(f"{path}: checkpoint changed since the export (sha256 differs); {fix}")
    from cmpf.model import build_model

    return build_model(model_config(manifest), checkpoint=path).to(device)


__all__ = ["ArtifactError", "Artifact", "BACKENDS", "Runner", "load_artifacts", "load_runner"]
