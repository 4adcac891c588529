"""Triton model repositories: ``ServeConfig`` → ``<repo>/cmpf_segment/{config.pbtxt, 1/model.py}``.

The ``config.pbtxt`` is built as Triton's own ``ModelConfig`` protobuf message (the generated
classes ship with ``tritonclient``) and written with ``google.protobuf.text_format``, so a field
Triton does not know cannot be written. Python-backend model: one image per request (batch dim 1,
``allow_ragged_batch`` so that requests of different sizes batch together), the dynamic batcher
gathering up to ``max_batch`` requests per ``execute``, ``instances`` CPU (or GPU) instances, and
the predictor's settings as string parameters read by ``cmpf.serving.model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cmpf.backend import Backend
from cmpf.errors import InputError
from cmpf.io import write_text
from cmpf.preprocess import DEFAULT_MAX_PIXELS
from cmpf.serving.protocol import INPUTS, MODEL_NAME, OUTPUTS, WireTensor

SERVABLE = (Backend.ONNXRUNTIME, Backend.OPENVINO, Backend.AOTI, Backend.TENSORRT)
DEFAULT_MAX_IMAGE_BYTES = 32 << 20


@dataclass(frozen=True)
class ServeConfig:
    artifacts: str  # directory written by `cmpf export`
    backend: Backend = Backend.ONNXRUNTIME
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 4  # requests per execute (dynamic batching)
    instances: int = 1  # model instances (each its own process and predictor)
    max_queue_delay_us: int = 2000  # how long the batcher waits to fill a batch
    device: str = "cpu"
    precision: Optional[str] = None
    resize: Optional[bool] = None  # None: the export's default (the official 800/1333 resize); as `cmpf run`
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # larger encoded images are refused (HTTP 400)
    startup_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        backend = Backend.parse(self.backend)
        object.__setattr__(self, "backend", backend)
        if backend not in SERVABLE:
            raise InputError(f"--backend {backend}: the server runs exported artifacts; choose one of "
                             f"{', '.join(b.value for b in SERVABLE)}")
        for flag, value in (("--max-batch", self.max_batch), ("--instances", self.instances),
                            ("--max-image-bytes", self.max_image_bytes), ("--max-pixels", self.max_pixels)):
            if value < 1:
                raise InputError(f"{flag} {value}: give a positive number")
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports):
            raise InputError(f"ports {ports} (HTTP, gRPC, metrics): give three different ports in 1..65535")
        if not (Path(self.artifacts) / "manifest.json").is_file():
            raise InputError(f"--artifacts {self.artifacts}: no manifest.json there; give a directory written by "
                             f"`cmpf export`")


def _tensor(message, spec: WireTensor, m) -> None:
    message.name = spec.name
    message.data_type = m.DataType.Value(f"TYPE_{spec.dtype}")
    message.dims.extend(spec.dims)


def python_model_py(module: str, name: str) -> str:
    """The ``model.py`` of a Python-backend model directory: the backend loads it; the model lives in cmpf."""
    return f'"""A cmpf model: see {module}."""\nfrom {module} import {name} as TritonPythonModel  # noqa: F401\n'


def model_config(cfg: ServeConfig, *, artifacts: Optional[str] = None, runners: str = "local"):
    """The ``cmpf_segment`` model's ``ModelConfig`` message.

    Args:
        artifacts: the artifact directory as the model finds it (relative: to the model's directory);
            default ``cfg.artifacts``, absolute.
        runners: ``local`` (the predictor's own runners) or ``bls`` (graph models of the repository).
    """
    import tritonclient.grpc.model_config_pb2 as m

    config = m.ModelConfig(name=MODEL_NAME, backend="python", max_batch_size=cfg.max_batch)
    for spec in INPUTS:
        tensor = config.input.add()
        _tensor(tensor, spec, m)
        tensor.optional, tensor.allow_ragged_batch = spec.optional, True
    for spec in OUTPUTS:
        _tensor(config.output.add(), spec, m)
    config.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_us
    kind = m.ModelInstanceGroup.KIND_GPU if cfg.device.startswith("cuda") else m.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=cfg.instances)
    params = {"artifacts": artifacts or str(Path(cfg.artifacts).resolve()), "runners": runners,
              "backend": cfg.backend.value, "device": cfg.device,
              "precision": cfg.precision or "", "resize": {None: "", True: "true", False: "false"}[cfg.resize],
              "max_pixels": str(cfg.max_pixels),
              "max_image_bytes": str(cfg.max_image_bytes)}
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def write_segment_model(repo: str | Path, cfg: ServeConfig) -> Path:
    """Write ``<repo>/cmpf_segment`` (config.pbtxt + version 1's model.py); returns that directory."""
    from google.protobuf import text_format

    model_dir = Path(repo) / MODEL_NAME
    write_text(model_dir / "config.pbtxt", text_format.MessageToString(model_config(cfg)))
    write_text(model_dir / "1" / "model.py", python_model_py("cmpf.serving.model", "TritonPythonModel"))
    return model_dir
