"""``manifest.json`` of an artifact directory: the typed ``Manifest`` and the only code that knows its JSON.

An artifact directory (written by ``cmpf export``) holds one file per graph and format
(``<graph>.<precision>.onnx|.pt2``) and ``manifest.json``: the model config, the default inference
options (sizes, thresholds, the seen classes), the vocabulary, the preprocessing constants, graph
specs, producer versions, the weights the graphs came from and the sha256 of every file. Runners
open files only through ``Manifest.artifact``, which refuses a file whose hash differs, naming the
command that rebuilds the directory. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

from cmpf import config as C
from cmpf.config import InferenceOptions, ModelConfig, SamConfig
from cmpf.errors import InputError
from cmpf.io import sha256_file, write_json
from cmpf.spec import GraphSpec, graph_specs
from cmpf.vocabulary import Vocabulary

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2  # 2: inference options apart from the model config; bump on any incompatible change
FAMILY = "cmpf"  # CMPF / FrozenSeg and FC-CLIP; another family's manifest names its own ("family": "fusioner")
FORMAT_SUFFIX = {"onnx": ".onnx", "aoti": ".pt2", "engine": ".engine", "torchtrt": ".ts"}
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")


def variant_key(fmt: str, precision: str = "fp32") -> str:
    """The key of a graph's file in ``GraphEntry.files``: ``onnx`` (fp32), ``onnx.int8``, ``engine.fp16``..."""
    return fmt if precision == "fp32" else f"{fmt}.{precision}"


def parse_precision(text: Optional[str], graphs) -> dict[str, str]:
    """``fp16`` (every graph) or ``sam_image_encoder=int8,decoder=fp16`` (the rest fp32) → {graph: precision}.

    ``graphs`` are the graph names the plan may name; an unknown graph or precision is an InputError.
    """
    graphs = list(graphs)
    plan = {g: "fp32" for g in graphs}
    if not text:
        return plan
    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        graph, _, precision = item.rpartition("=")
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r} in {text!r}; choose from {', '.join(PRECISIONS)}")
        if not graph:
            if len(items) > 1:
                raise InputError(f"--precision {text!r}: give one precision for every graph ('fp16') or "
                                 f"GRAPH=PRECISION pairs ('sam_image_encoder=int8,decoder=fp16'), not both")
            return {g: precision for g in graphs}
        if graph not in plan:
            raise InputError(f"--precision {text!r}: no graph {graph!r}; the graphs are {', '.join(graphs)}")
        plan[graph] = precision
    return plan


class ArtifactError(InputError):
    """An artifact directory or file that cannot be used, with the command that rebuilds it."""


def preprocessing(cfg: ModelConfig) -> dict:
    """The constants of ``cmpf.preprocess`` every backend applies before the graphs (for other readers,
    such as a C++ pipeline; checked against this cmpf's values when the manifest is read)."""
    return {
        "clip_pixel_mean": list(C.CLIP_PIXEL_MEAN), "clip_pixel_std": list(C.CLIP_PIXEL_STD),
        "sam_pixel_mean": list(C.SAM_PIXEL_MEAN), "sam_pixel_std": list(C.SAM_PIXEL_STD),
        "size_divisibility": cfg.size_divisibility, "sam_input_size": cfg.sam_input_size,
        "axis_order": "NCHW, sizes (H, W), RGB 0-255 input",
    }


@dataclass(frozen=True)
class GraphFile:
    """One exported file of one graph; names are relative to the artifact directory."""

    path: str
    precision: str
    device: str  # what the file runs on: "any" (ONNX), "cpu" / "cuda" (AOTInductor)
    external_data: tuple[str, ...] = ()
    verified_rel_error: Optional[dict[str, float]] = None  # the export-time ONNX Runtime check
    recipe: Optional[dict] = None  # how a derived file was made: its source, tool versions, settings


@dataclass(frozen=True)
class GraphEntry:
    spec: GraphSpec
    files: dict[str, GraphFile]  # variant key (``variant_key``: "onnx", "aoti", "onnx.int8", ...) -> file


@dataclass(frozen=True)
class WeightsRecord:
    """The weights the graphs came from: an absolute path, or a file inside the directory."""

    path: str
    sha256: str
    random_init: bool = False


@dataclass(frozen=True)
class Artifact:
    """One verified file of one graph."""

    path: Path
    graph: GraphSpec
    format: str
    device: str
    manifest: "Manifest"
    precision: str = "fp32"
    recipe: Optional[dict] = None


@dataclass(frozen=True)
class Manifest:
    model: ModelConfig
    inference: InferenceOptions
    graphs: dict[str, GraphEntry]
    spec_args: dict  # channels and embed_dim of ``cmpf.spec.graph_specs``, to re-derive the specs
    files: dict[str, str]  # every file of the directory the manifest vouches for -> sha256
    producer: dict[str, str]
    command: str  # the ``cmpf export`` command line that rebuilds the directory
    opset: Optional[int] = None
    vocabulary: Optional[Vocabulary] = None  # the default vocabulary of ``cmpf run --artifacts``
    weights: Optional[WeightsRecord] = None
    directory: Optional[Path] = field(default=None, compare=False)  # where it was read from
    family: ClassVar[str] = FAMILY  # written when it is another family's (cmpf.fusioner.manifest)

    def preprocessing_constants(self) -> dict:
        """What every backend does before the graphs (``preprocessing``), recorded and checked on reading."""
        return preprocessing(self.model)

    def expected_specs(self) -> dict[str, GraphSpec]:
        """The tensor specs this cmpf gives the model's graphs (the files must have been exported with them)."""
        return graph_specs(self.model, **self.spec_args)

    # -- writing ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format_version": MANIFEST_VERSION,
            **({"family": self.family} if self.family != FAMILY else {}),
            "model": dataclasses.asdict(self.model),
            "inference": self.inference.to_json(),
            "preprocessing": self.preprocessing_constants(),
            "vocabulary": self.vocabulary.to_json() if self.vocabulary else None,
            "weights": dataclasses.asdict(self.weights) if self.weights else None,
            "spec_args": self.spec_args,
            "graphs": graphs_to_json(self.graphs),
            "producer": self.producer,
            "export": {"command": self.command, "opset": self.opset},
            "files": self.files,
        }

    def write(self, directory: str | Path) -> Path:
        """Write ``manifest.json`` atomically (the last step of an export: its presence marks completion)."""
        return write_json(Path(directory) / MANIFEST_NAME, self.to_json())

    # -- reading ------------------------------------------------------------------------------
    @staticmethod
    def read(directory: str | Path) -> "Manifest":
        """Load and check ``manifest.json`` (format version, fields, specs, preprocessing constants)."""
        directory = Path(directory)
        data = read_manifest_json(directory)
        family = data.get("family", FAMILY)
        if family != FAMILY:  # another model family's export (cmpf.fusioner reads its own)
            raise ArtifactError(f"{directory}: a {family} export; this command reads CMPF / FC-CLIP exports only "
                                f"(`cmpf run --artifacts {directory}` runs it)")
        try:
            manifest = _from_json(data, directory)
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{directory / MANIFEST_NAME}: malformed manifest ({type(e).__name__}: {e}); "
                                f"re-export with `{rebuild_command(data, directory)}`") from None
        manifest._check(data)
        return manifest

    def _check(self, data: dict) -> None:
        fix = f"re-export with `{self.command}`"
        if data.get("preprocessing") != self.preprocessing_constants():
            raise ArtifactError(f"{self.directory}: the manifest's preprocessing constants differ from this "
                                f"cmpf's; {fix}")
        expected = self.expected_specs()
        changed = sorted(g for g, e in self.graphs.items() if e.spec != expected.get(g))
        if changed:
            raise ArtifactError(f"{self.directory}: graphs {changed} were exported with other tensor specs than "
                                f"this cmpf uses; {fix}")

    def verify_file(self, name: str) -> Path:
        """Path of file ``name`` after checking it exists and matches the recorded sha256."""
        path = Path(self.directory) / name
        expected = self.files.get(name)
        fix = f"re-export with `{self.command}`"
        if expected is None:
            raise ArtifactError(f"{path}: not listed in {MANIFEST_NAME}; {fix}")
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; {fix}")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(f"{path}: sha256 {actual[:12]}… does not match the manifest ({expected[:12]}…); "
                                f"the file changed after export; {fix}")
        return path

    def artifact(self, graph: str, fmt: str, precision: str = "fp32") -> Artifact:
        """The verified ``fmt`` file of ``graph`` at ``precision`` (and its external-data files)."""
        entry = self.graphs.get(graph)
        if entry is None:
            raise ArtifactError(f"{self.directory}: no graph {graph!r} (has {sorted(self.graphs)}); re-export with "
                                f"`{self.command}`")
        file = entry.files.get(variant_key(fmt, precision))
        if file is None and precision != "fp32":
            have = ", ".join(sorted(entry.files)) or "none"
            raise ArtifactError(f"{self.directory}: graph {graph!r} has no {precision} {fmt} file (has {have}); "
                                f"make it with `{self._make_command(fmt, f'{graph}={precision}')}`")
        if file is None and fmt == "engine":
            raise ArtifactError(f"{self.directory}: graph {graph!r} has no TensorRT engine; build it with "
                                f"`cmpf build --artifacts {self.directory} --graphs {graph}`")
        if file is None:
            raise ArtifactError(f"{self.directory}: graph {graph!r} was not exported as {fmt} (has "
                                f"{sorted(entry.files)}); export it with `{self.command} --format {fmt}`")
        for extra in file.external_data:
            self.verify_file(extra)
        return Artifact(self.verify_file(file.path), entry.spec, fmt, file.device, self, file.precision, file.recipe)

    def precisions(self, graph: str, fmt: str) -> list[str]:
        """The precisions ``graph`` has a ``fmt`` file of (fp32 first)."""
        entry = self.graphs.get(graph)
        found = [f.precision for k, f in (entry.files.items() if entry else ())
                 if k == fmt or k.startswith(fmt + ".")]
        return sorted(found, key=lambda p: (p != "fp32", p))

    def runtime_plan(self, fmt: str, precision: Optional[str], runtime: tuple[str, ...] = ()) -> dict[str, str]:
        """{graph: precision} of ``--precision`` for this directory: one name uses that precision wherever a
        graph has it (fp32 elsewhere; none having it is an error), ``GRAPH=PRECISION`` pairs are exact.

        ``runtime``: precisions the backend applies itself to the fp32 files (OpenVINO's bf16), available to
        every graph.
        """
        plan = parse_precision(precision, self.graphs)
        have = lambda g, p: p == "fp32" or p in runtime or p in self.precisions(g, fmt)  # noqa: E731
        if precision and "=" not in precision:
            wanted = next(iter(plan.values()))
            plan = {g: (wanted if have(g, wanted) else "fp32") for g in plan}
            if wanted != "fp32" and wanted not in plan.values():
                raise ArtifactError(f"{self.directory}: no graph has a {wanted} {fmt} file; make them with "
                                    f"`{self._make_command(fmt, wanted)}`")
        for graph, p in plan.items():
            if not have(graph, p):
                raise ArtifactError(f"{self.directory}: graph {graph!r} has no {p} {fmt} file (has "
                                    f"{', '.join(self.precisions(graph, fmt)) or 'none'}); make it with "
                                    f"`{self._make_command(fmt, f'{graph}={p}')}`")
        return plan

    def _make_command(self, fmt: str, precision: str) -> str:
        if fmt == "onnx":
            return f"cmpf quantize --artifacts {self.directory} --precision {precision}"
        return f"cmpf build --artifacts {self.directory} --precision {precision}"

    def with_files(self, added: dict[str, dict[str, GraphFile]], hashes: dict[str, str]) -> "Manifest":
        """A copy with derived files added: ``added`` {graph: {variant key: file}}, ``hashes`` {name: sha256}
        of every new file (a key already there is replaced)."""
        graphs = dict(self.graphs)
        for graph, files in added.items():
            graphs[graph] = GraphEntry(graphs[graph].spec, {**graphs[graph].files, **files})
        return dataclasses.replace(self, graphs=graphs, files={**self.files, **hashes})

    def require_all_graphs(self) -> None:
        """The pipeline needs every graph of the model: refuse a partial export with the full command."""
        expected = self.expected_specs()
        missing = sorted(set(expected) - set(self.graphs))
        if missing:
            command = shlex.split(self.command)
            if "--graphs" in command:
                del command[command.index("--graphs"):command.index("--graphs") + 2]
            raise ArtifactError(f"{self.directory}: graphs {missing} were not exported; the pipeline needs every "
                                f"graph: `{shlex.join(command)}`")

    def weights_path(self) -> Path:
        """The verified weights file the graphs came from (for the eager ``torch`` backend)."""
        fix = f"re-export with `{self.command}`"
        if self.weights is None:
            raise ArtifactError(f"{self.directory}: no weights recorded in the manifest, so the torch backend "
                                f"cannot rebuild the model; use --backend onnxruntime|aoti, or {fix} --checkpoint CKPT")
        path = Path(self.weights.path)
        if not path.is_absolute():
            return self.verify_file(self.weights.path)
        if not path.is_file():
            raise ArtifactError(f"{path}: checkpoint recorded in {self.directory}/{MANIFEST_NAME} is missing; {fix}")
        if sha256_file(path) != self.weights.sha256:
            raise ArtifactError(f"{path}: checkpoint changed since the export (sha256 differs); {fix}")
        return path


def read_manifest_json(directory: str | Path) -> dict:
    """The JSON of ``directory/manifest.json`` after the checks every family shares (present, readable, format
    version); an ``ArtifactError`` naming the command that rebuilds the directory otherwise."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        what = "no such directory" if not directory.is_dir() else f"no {MANIFEST_NAME}"
        raise ArtifactError(f"{directory}: {what}; export it with `{rebuild_command(None, directory)}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable manifest ({' '.join(str(e).split())}); re-export with "
                            f"`{rebuild_command(None, directory)}`") from None
    command = rebuild_command(data if isinstance(data, dict) else None, directory)
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != MANIFEST_VERSION:
        raise ArtifactError(f"{path}: manifest format version {version!r}, this cmpf reads version "
                            f"{MANIFEST_VERSION}; re-export with `{command}`")
    return data


def manifest_family(directory: str | Path) -> str:
    """The model family of an artifact directory (``"cmpf"`` when the manifest names none; also when it is
    unreadable, so that ``Manifest.read`` reports that)."""
    try:
        data = json.loads((Path(directory) / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return FAMILY
    family = data.get("family", FAMILY) if isinstance(data, dict) else FAMILY
    return family if isinstance(family, str) else FAMILY


def graphs_to_json(graphs: dict[str, GraphEntry]) -> dict:
    return {g: {"spec": e.spec.to_json(), "files": {f: _file_json(x) for f, x in e.files.items()}}
            for g, e in graphs.items()}


def graphs_from_json(data: dict) -> dict[str, GraphEntry]:
    return {
        g: GraphEntry(GraphSpec.from_json(e["spec"]), {
            key: GraphFile(f["path"], f["precision"], f["device"], tuple(f.get("external_data", ())),
                           f.get("verified_rel_error"), f.get("recipe"))
            for key, f in e["files"].items()})
        for g, e in data.items()
    }


def rebuild_command(data: Optional[dict], directory: str | Path) -> str:
    """The ``cmpf export`` command line that (re)creates ``directory``."""
    export = data.get("export") if isinstance(data, dict) else None
    if isinstance(export, dict) and export.get("command"):
        return export["command"]
    return f"cmpf export --model PRESET [--checkpoint CKPT] --out {directory}"


def model_config_from_json(data: dict) -> ModelConfig:
    """The ``ModelConfig`` stored by ``dataclasses.asdict``; unknown fields are an error."""
    data = dict(data)
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise ValueError(f"the model config has fields this cmpf does not know: {unknown}")
    if data.get("sam") is not None:
        data["sam"] = SamConfig(**{**data["sam"], "global_attn_indexes": tuple(data["sam"]["global_attn_indexes"])})
    return ModelConfig(**data)


def _file_json(f: GraphFile) -> dict:
    out = {"path": f.path, "precision": f.precision, "device": f.device, "external_data": list(f.external_data)}
    if f.verified_rel_error is not None:
        out["verified_rel_error"] = f.verified_rel_error
    if f.recipe is not None:
        out["recipe"] = f.recipe
    return out


def _from_json(data: dict, directory: Path) -> Manifest:
    graphs = graphs_from_json(data["graphs"])
    return Manifest(
        model=model_config_from_json(data["model"]),
        inference=InferenceOptions.from_json(data["inference"]),
        graphs=graphs,
        spec_args=dict(data["spec_args"]),
        files=dict(data["files"]),
        producer=dict(data["producer"]),
        command=data["export"]["command"],
        opset=data["export"].get("opset"),
        vocabulary=Vocabulary.from_json(data["vocabulary"]) if data.get("vocabulary") else None,
        weights=WeightsRecord(**data["weights"]) if data.get("weights") else None,
        directory=directory,
    )
