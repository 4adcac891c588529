"""``manifest.json`` of an artifact directory: what was exported, from what, by which versions.

Consumes the model config, the graph specs and the files written by the exporters; produces the
JSON document that ``cmpf.runtime.artifacts`` reads back (layout version ``MANIFEST_VERSION``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
from pathlib import Path
from typing import Optional

from cmpf import config as C
from cmpf.config import ModelConfig
from cmpf.outputs import write_json
from cmpf.runtime.artifacts import MANIFEST_NAME, MANIFEST_VERSION, sha256_file
from cmpf.spec import GraphSpec
from cmpf.vocabulary import Vocabulary


def producer_versions() -> dict[str, str]:
    """Versions of everything that shaped the files (torch, onnx, onnxruntime, cmpf, python)."""
    import torch

    versions = {"cmpf": __import__("cmpf").__version__, "torch": torch.__version__,
                "python": platform.python_version()}
    for dist in ("onnx", "onnxruntime", "onnxscript"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def preprocessing(cfg: ModelConfig) -> dict:
    """The constants of ``cmpf.preprocess`` that every backend applies before the graphs."""
    return {
        "clip_pixel_mean": list(C.CLIP_PIXEL_MEAN), "clip_pixel_std": list(C.CLIP_PIXEL_STD),
        "sam_pixel_mean": list(C.SAM_PIXEL_MEAN), "sam_pixel_std": list(C.SAM_PIXEL_STD),
        "min_size_test": cfg.min_size_test, "max_size_test": cfg.max_size_test,
        "size_divisibility": cfg.size_divisibility, "sam_input_size": cfg.sam_input_size,
        "axis_order": "NCHW, sizes (H, W), RGB 0-255 input",
    }


def build_manifest(
    cfg: ModelConfig,
    specs: dict[str, GraphSpec],
    spec_args: dict,
    graph_files: dict[str, dict[str, dict]],
    directory: Path,
    *,
    command: str,
    opset: Optional[int],
    checkpoint: Optional[dict] = None,
    vocabulary: Optional[Vocabulary] = None,
    train_vocabulary: Optional[Vocabulary] = None,
) -> dict:
    """The manifest document.

    Args:
        spec_args: ``channels`` and ``embed_dim`` of ``cmpf.spec.graph_specs`` (to re-derive the specs).
        graph_files: graph → format → {"path", "precision", "device", "external_data"?}, names
            relative to ``directory``.
        checkpoint: {"path": absolute or directory-relative, "sha256"} of the weights, if any.
        command: the ``cmpf export`` command line that rebuilds the directory.
    """
    names = [f["path"] for per_graph in graph_files.values() for f in per_graph.values()]
    names += [x for per_graph in graph_files.values() for f in per_graph.values() for x in f.get("external_data", [])]
    if checkpoint and not Path(checkpoint["path"]).is_absolute():
        names.append(checkpoint["path"])
    return {
        "format_version": MANIFEST_VERSION,
        "model": dataclasses.asdict(cfg),
        "preprocessing": preprocessing(cfg),
        "vocabulary": vocabulary.to_json() if vocabulary else None,
        "train_vocabulary": train_vocabulary.to_json() if train_vocabulary else None,
        "checkpoint": checkpoint,
        "spec_args": spec_args,
        "graphs": {g: {"spec": specs[g].to_json(), "files": graph_files.get(g, {})} for g in specs},
        "producer": producer_versions(),
        "export": {"command": command, "opset": opset},
        "files": {n: sha256_file(directory / n) for n in sorted(names)},
    }


def write_manifest(directory: str | Path, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (last step of an export: its presence marks completion)."""
    return write_json(Path(directory) / MANIFEST_NAME, manifest)
