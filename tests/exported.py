"""Exports of the random-weight ``tiny`` preset, made once per test session and shared by test files.

Exporting is the slow part of the export/runtime tests (torch.export + ONNX translation of the
decoder takes about a minute on 2 cores), so every test file asks this cache instead of exporting
again. Directories live under one temporary root removed at exit; tests that tamper with files
copy them first (``copy_of``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import torch

_ROOT: Path | None = None
_CACHE: dict[tuple, Path] = {}
CLASSES = "cat;dog,puppy;sky,heaven;grass"


def _root() -> Path:
    """The session's export root; ``CMPF_TEST_EXPORTS=DIR`` keeps exports there across sessions (for
    development only: an export made by older code is reused as it is)."""
    global _ROOT
    if _ROOT is None:
        kept = os.environ.get("CMPF_TEST_EXPORTS")
        if kept:
            _ROOT = Path(kept)
            _ROOT.mkdir(parents=True, exist_ok=True)
        else:
            _ROOT = Path(tempfile.mkdtemp(prefix="cmpf-test-exports-"))
            atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def tiny_model():
    """The random-weight tiny model every export here comes from (seed 0)."""
    from cmpf.model import build_model

    torch.manual_seed(0)
    return build_model("tiny")


def tiny_export(formats: tuple[str, ...] = ("onnx",), graphs: tuple[str, ...] | None = None) -> Path:
    """Artifact directory of the tiny preset (weights saved as ``weights.pth`` inside)."""
    from cmpf.export.api import ExportConfig, export_model

    key = (formats, graphs)
    if key not in _CACHE:
        out = _root() / f"tiny-{'-'.join(formats)}-{'-'.join(graphs or ('all',))}"
        if not (out / "manifest.json").is_file():
            export_model(ExportConfig("tiny", str(out), formats=formats, graphs=graphs), model=tiny_model(),
                         progress=False)
        _CACHE[key] = out
    return _CACHE[key]


def copy_of(directory: Path, tmp_path: Path) -> Path:
    """A private copy of an artifact directory, safe to tamper with."""
    return Path(shutil.copytree(directory, tmp_path / directory.name))


def artifact(directory: Path, graph: str, fmt: str):
    """The verified file of one graph (``Manifest.artifact``)."""
    from cmpf.manifest import Manifest

    return Manifest.read(directory).artifact(graph, fmt)


def predictor(directory: Path, backend: str):
    """Every graph of an artifact directory on one backend, through the one resolver."""
    from cmpf.predictor import ModelSource, load_predictor

    return load_predictor(ModelSource(artifacts=str(directory)), backend)
