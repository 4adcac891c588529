"""A model repository for a standalone Triton Inference Server: artifact directory → ``REPO/``.

    REPO/<graph>/config.pbtxt + 1/model.onnx | 1/model.plan | 1/model.py   one model per graph
    REPO/cmpf_segment/config.pbtxt + 1/model.py + 1/artifacts/            the pipeline, as a BLS model

Graph models take their tensor names, dtypes and dims from the manifest's ``GraphSpec``s
(``cmpf.spec``; symbolic dims become -1). A graph whose every input and output leads with
``batch`` gets ``max_batch_size`` and Triton's batch dimension; the others (the text encoder, and
the decoder and mask classifier, which take the vocabulary's (K, S, D) embeddings beside the
image batch) have ``max_batch_size: 0`` and their full dims. ``graph_backend``:

- ``onnxruntime``: Triton's ONNX Runtime backend on the exported fp32 ONNX files;
- ``tensorrt``: Triton's TensorRT backend on the engines of ``cmpf build`` (every graph needs one);
- ``python``: Python-backend models that run cmpf's own runner of ``runner`` (onnxruntime, openvino,
  aoti) on the artifact files (``cmpf.serving.bls.GraphModel``), for graphs Triton has no backend for.

``cmpf_segment`` is the same Python-backend model ``cmpf serve`` runs (``cmpf.serving.protocol``'s
inputs and outputs, dynamic batching) with the pre- and post-processing in Python and every graph
call a BLS request to the graph models (``cmpf.serving.bls.BlsRunner``). Its ``1/artifacts/`` holds
the manifest (and, for ``python`` graphs, the graph files); the server's Python environment needs
cmpf installed (``pip install cmpf``). Every ``config.pbtxt`` is a ``ModelConfig`` message of
Triton's own protobuf schema, written with ``text_format``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cmpf.backend import Backend
from cmpf.errors import InputError
from cmpf.io import Staging, write_text
from cmpf.manifest import Manifest
from cmpf.serving.protocol import MODEL_NAME
from cmpf.serving.repository import ServeConfig, model_config, python_model_py
from cmpf.spec import GraphSpec

GraphBackend = Literal["onnxruntime", "tensorrt", "python"]
_TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}
_PYTHON_RUNNERS = (Backend.ONNXRUNTIME, Backend.OPENVINO, Backend.AOTI)


@dataclass(frozen=True)
class RepoConfig:
    artifacts: str  # directory written by `cmpf export` (and `cmpf build` for tensorrt)
    out: str  # the repository to write (must not exist, or be empty)
    graph_backend: GraphBackend = "onnxruntime"
    runner: Backend = Backend.ONNXRUNTIME  # python graph models only
    max_batch: int = 4
    instances: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "runner", Backend.parse(self.runner))
        if self.graph_backend not in ("onnxruntime", "tensorrt", "python"):
            raise InputError(f"--graph-backend {self.graph_backend}: choose onnxruntime, tensorrt or python")
        if self.runner not in _PYTHON_RUNNERS:
            raise InputError(f"--runner {self.runner}: python graph models run one of "
                             f"{', '.join(b.value for b in _PYTHON_RUNNERS)}")
        if self.max_batch < 1 or self.instances < 1:
            raise InputError(f"--max-batch {self.max_batch} --instances {self.instances}: give positive numbers")
        out = Path(self.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError(f"--out {out}: exists and is not an empty directory; choose a new one")


def is_batched(spec: GraphSpec) -> bool:
    """Whether every tensor of the graph leads with the image batch (Triton's batch dimension)."""
    return all(t.dims and t.dims[0] == "batch" for t in spec.inputs + spec.outputs)


def graph_config(spec: GraphSpec, cfg: RepoConfig):
    """The ``ModelConfig`` message of one graph model."""
    import tritonclient.grpc.model_config_pb2 as m

    batched = is_batched(spec)
    config = m.ModelConfig(name=spec.name, max_batch_size=cfg.max_batch if batched else 0)
    match cfg.graph_backend:
        case "onnxruntime":
            config.platform, config.backend = "onnxruntime_onnx", "onnxruntime"
        case "tensorrt":
            config.platform, config.backend = "tensorrt_plan", "tensorrt"
        case "python":
            config.backend = "python"
            config.parameters["runner"].string_value = cfg.runner.value
            config.parameters["device"].string_value = cfg.device
    for tensors, add in ((spec.inputs, config.input.add), (spec.outputs, config.output.add)):
        for t in tensors:
            dims = t.dims[1:] if batched else t.dims
            add(name=t.name, data_type=m.DataType.Value(_TRITON_DTYPES[t.dtype]),
                dims=[d if isinstance(d, int) else -1 for d in dims])
    kind = m.ModelInstanceGroup.KIND_GPU if cfg.device.startswith("cuda") else m.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=cfg.instances)
    return config


def write_triton_repo(cfg: RepoConfig) -> list[Path]:
    """Write the repository (all or nothing, through one ``Staging``); returns the files written."""
    from google.protobuf import text_format

    manifest = Manifest.read(cfg.artifacts)
    manifest.require_all_graphs()
    fmt = {"onnxruntime": "onnx", "tensorrt": "engine", "python": cfg.runner.format}[cfg.graph_backend]
    found = {g: manifest.artifact(g, fmt) for g in manifest.graphs}  # verified; refuses a missing engine
    with Staging() as stage:
        repo = stage.directory(cfg.out, "--out")
        artifacts = repo / MODEL_NAME / "1" / "artifacts"
        artifacts.mkdir(parents=True)
        shutil.copy2(Path(cfg.artifacts) / "manifest.json", artifacts / "manifest.json")
        for graph, artifact in found.items():
            write_text(repo / graph / "config.pbtxt", text_format.MessageToString(graph_config(artifact.graph, cfg)))
            if cfg.graph_backend == "python":
                write_text(repo / graph / "1" / "model.py", python_model_py("cmpf.serving.bls", "GraphModel"))
                entry = manifest.graphs[graph].files[fmt]
                for name in (entry.path, *entry.external_data):
                    shutil.copy2(Path(cfg.artifacts) / name, artifacts / name)
            else:
                name = "model.onnx" if fmt == "onnx" else "model.plan"
                (repo / graph / "1").mkdir(parents=True)
                shutil.copy2(artifact.path, repo / graph / "1" / name)
                for extra in manifest.graphs[graph].files[fmt].external_data:  # beside model.onnx, by its name
                    shutil.copy2(Path(cfg.artifacts) / extra, repo / graph / "1" / extra)
        serve = ServeConfig(cfg.artifacts, Backend.ONNXRUNTIME, max_batch=cfg.max_batch, instances=cfg.instances,
                            device=cfg.device)
        segment = model_config(serve, artifacts="1/artifacts", runners="bls")
        write_text(repo / MODEL_NAME / "config.pbtxt", text_format.MessageToString(segment))
        write_text(repo / MODEL_NAME / "1" / "model.py", python_model_py("cmpf.serving.model", "TritonPythonModel"))
    return stage.committed
