"""Artifact directories written by ``cmpf export``: reading and verifying ``manifest.json``.

An artifact directory holds one file per graph and format (``<graph>.<precision>.onnx|.pt2``) and
``manifest.json`` (model config, preprocessing constants, graph specs, producer versions and the
sha256 of every file). Runners load files only through ``graph_artifact``, which refuses a missing
or incompatible manifest and any file whose hash differs, naming the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from cmpf.config import ModelConfig, SamConfig
from cmpf.spec import GraphSpec

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1  # bump on any incompatible change of the layout below
FORMAT_SUFFIX = {"onnx": ".onnx", "aoti": ".pt2"}
BACKEND_FORMAT = {"onnxruntime": "onnx", "aoti": "aoti"}


class ArtifactError(Exception):
    """An artifact directory or file that cannot be used, with the command that rebuilds it."""


@dataclass(frozen=True)
class Artifact:
    """One verified file of one graph."""

    path: Path
    graph: GraphSpec
    format: str  # "onnx" | "aoti"
    device: str  # the device the file was produced for ("cpu", "cuda")
    manifest: dict


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def rebuild_command(manifest: Optional[dict], directory: str | Path) -> str:
    """The ``cmpf export`` command line that (re)creates ``directory``."""
    if manifest and manifest.get("export", {}).get("command"):
        return manifest["export"]["command"]
    return f"cmpf export --model PRESET [--checkpoint CKPT] --out {directory}"


def read_manifest(directory: str | Path) -> dict:
    """Load and check ``manifest.json`` of an artifact directory (format version, required keys)."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        what = "no such directory" if not directory.is_dir() else f"no {MANIFEST_NAME}"
        raise ArtifactError(f"{directory}: {what}; export it with `{rebuild_command(None, directory)}`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable manifest ({e}); re-export with "
                            f"`{rebuild_command(None, directory)}`") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != MANIFEST_VERSION:
        raise ArtifactError(f"{path}: manifest format version {version!r}, this cmpf reads version "
                            f"{MANIFEST_VERSION}; re-export with `{rebuild_command(manifest, directory)}`")
    missing = [k for k in ("model", "graphs", "files", "producer", "export") if k not in manifest]
    if missing:
        raise ArtifactError(f"{path}: manifest lacks {missing}; re-export with "
                            f"`{rebuild_command(manifest, directory)}`")
    return manifest


def verify_file(directory: str | Path, name: str, manifest: dict) -> Path:
    """Path of file ``name`` after checking it exists and matches the manifest's sha256."""
    path = Path(directory) / name
    expected = manifest["files"].get(name)
    fix = f"re-export with `{rebuild_command(manifest, directory)}`"
    if expected is None:
        raise ArtifactError(f"{path}: not listed in {MANIFEST_NAME}; {fix}")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {fix}")
    actual = sha256_file(path)
    if actual != expected:
        raise ArtifactError(f"{path}: sha256 {actual[:12]}… does not match the manifest ({expected[:12]}…); "
                            f"the file changed after export; {fix}")
    return path


def graph_artifact(directory: str | Path, graph: str, fmt: str, manifest: Optional[dict] = None) -> Artifact:
    """The verified ``fmt`` file of ``graph`` (and its external-data files) in ``directory``."""
    manifest = manifest or read_manifest(directory)
    entry = manifest["graphs"].get(graph)
    fix = f"`{rebuild_command(manifest, directory)}`"
    if entry is None:
        raise ArtifactError(f"{directory}: no graph {graph!r} (has {sorted(manifest['graphs'])}); re-export with {fix}")
    file = entry["files"].get(fmt)
    if file is None:
        raise ArtifactError(f"{directory}: graph {graph!r} was not exported as {fmt} (has "
                            f"{sorted(entry['files'])}); export it with {fix} --format {fmt}")
    for extra in file.get("external_data", []):
        verify_file(directory, extra, manifest)
    path = verify_file(directory, file["path"], manifest)
    return Artifact(path, GraphSpec.from_json(entry["spec"]), fmt, file.get("device", "cpu"), manifest)


def model_config(manifest: dict) -> ModelConfig:
    """The ``ModelConfig`` stored by ``dataclasses.asdict``; unknown fields are an error."""
    data = dict(manifest["model"])
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ArtifactError(f"manifest model config has fields this cmpf does not know: {unknown}; "
                            f"re-export with `{rebuild_command(manifest, '<dir>')}`")
    if data.get("sam") is not None:
        sam = dict(data["sam"])
        sam["global_attn_indexes"] = tuple(sam["global_attn_indexes"])
        data["sam"] = SamConfig(**sam)
    return ModelConfig(**data)
