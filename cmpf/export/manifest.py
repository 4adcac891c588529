"""The ``Manifest`` of a finished export: what was exported, from what, by which versions.

Consumes the model config, the default inference options, the graph specs and the files the
exporters wrote; produces a ``cmpf.manifest.Manifest`` (the one reader and writer of its JSON).
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path
from typing import Optional

from cmpf.config import InferenceOptions, ModelConfig
from cmpf.io import sha256_file
from cmpf.manifest import GraphEntry, GraphFile, Manifest, WeightsRecord
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


def build_manifest(
    cfg: ModelConfig,
    options: InferenceOptions,
    specs: dict[str, GraphSpec],
    spec_args: dict,
    graph_files: dict[str, dict[str, GraphFile]],
    directory: Path,
    *,
    command: str,
    opset: Optional[int],
    weights: Optional[WeightsRecord] = None,
    vocabulary: Optional[Vocabulary] = None,
) -> Manifest:
    """The manifest of ``directory``; every listed file (graphs, external data, weights inside) is hashed.

    Args:
        spec_args: ``channels`` and ``embed_dim`` of ``cmpf.spec.graph_specs`` (to re-derive the specs).
        graph_files: graph → format → file, names relative to ``directory``.
        command: the ``cmpf export`` command line that rebuilds the directory.
    """
    names = [f.path for per_graph in graph_files.values() for f in per_graph.values()]
    names += [x for per_graph in graph_files.values() for f in per_graph.values() for x in f.external_data]
    if weights and not Path(weights.path).is_absolute():
        names.append(weights.path)
    return Manifest(
        model=cfg, inference=options,
        graphs={g: GraphEntry(specs[g], graph_files.get(g, {})) for g in specs},
        spec_args=spec_args, files={n: sha256_file(directory / n) for n in sorted(names)},
        producer=producer_versions(), command=command, opset=opset, vocabulary=vocabulary, weights=weights,
    )
