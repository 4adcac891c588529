"""A client of ``cmpf_segment`` (tritonclient, HTTP or gRPC): image files → the files ``cmpf run`` writes.

``SegmentClient.segment`` sends one encoded image (and optionally a vocabulary) and returns the
server's ``Segmentation`` and vocabulary (``cmpf.serving.protocol``); ``client_run`` does that for
every image of a ``ClientConfig`` and writes ``cmpf.outputs``' files through one ``Staging``, with
the same image ids and category ids as ``cmpf run``. A server-side refusal (HTTP 400) is an
``InputError`` with the server's message; an unreachable server is an ``EnvironmentProblem``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from cmpf.errors import EnvironmentProblem, InputError, require
from cmpf.io import Staging
from cmpf.outputs import Categories, ResultWriter, check_outputs, stem_image_ids
from cmpf.postprocess import Segmentation
from cmpf.preprocess import load_image
from cmpf.serving.protocol import MODEL_NAME, segmentation_of, text_tensor, vocabulary_text
from cmpf.vocabulary import Vocabulary, load_vocabulary, vocabulary_ids


class SegmentClient:
    """``cmpf_segment`` at ``url`` (``host:port``) over ``protocol``."""

    def __init__(self, url: str = "localhost:8000", protocol: Literal["http", "grpc"] = "http",
                 timeout_s: float = 120.0):
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        self.api = require(f"tritonclient.{protocol}", "serve", "cmpf client")
        if protocol == "http":
            self.client = self.api.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        else:
            self.client = self.api.InferenceServerClient(url)

    def is_ready(self) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self.client.is_server_ready() and self.client.is_model_ready(MODEL_NAME))
        except (InferenceServerException, ConnectionError, OSError):
            return False

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named uint8 arrays (``cmpf.serving.protocol``'s inputs) → the three outputs."""
        from tritonclient.utils import InferenceServerException

        tensors = []
        for name, value in inputs.items():
            tensor = self.api.InferInput(name, list(value.shape), "UINT8")
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        kwargs = {"timeout": int(self.timeout_s)} if self.protocol == "http" else {"client_timeout": self.timeout_s}
        try:
            result = self.client.infer(MODEL_NAME, tensors, **kwargs)
        except InferenceServerException as e:
            status, message = str(e.status() or ""), " ".join((e.message() or str(e)).split())
            if status in ("400", "StatusCode.INVALID_ARGUMENT"):
                raise InputError(f"the server refused the request: {message}") from None
            raise EnvironmentProblem(f"cmpf_segment at {self.url} failed ({status or 'no status'}): {message}; is "
                                     f"`cmpf serve` running there?") from None
        except (ConnectionError, OSError) as e:
            raise EnvironmentProblem(f"no server at {self.url} ({e}); start one with `cmpf serve --artifacts DIR`") \
                from None
        return {name: result.as_numpy(name) for name in ("semantic", "panoptic", "result")}

    def segment(self, image_file: bytes | np.ndarray,
                vocabulary: Optional[Vocabulary] = None) -> tuple[Segmentation, Vocabulary]:
        """An encoded image (bytes) or uint8 (H, W, 3) pixels → the server's segmentation and vocabulary."""
        if isinstance(image_file, bytes):
            inputs = {"image": np.frombuffer(image_file, dtype=np.uint8)[None].copy()}
        else:
            inputs = {"pixels": np.ascontiguousarray(image_file, dtype=np.uint8)[None]}
        if vocabulary is not None:
            inputs["vocabulary"] = text_tensor(vocabulary_text(vocabulary))
        out = self.infer(inputs)
        record = json.loads(out["result"][0].tobytes().decode("utf-8"))
        return segmentation_of(out["semantic"][0], out["panoptic"][0], record)

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class ClientConfig:
    images: tuple[str, ...]  # image files
    out_dir: str
    url: str = "localhost:8000"
    protocol: Literal["http", "grpc"] = "http"
    vocab: Optional[str] = None  # default: the server's (the export's vocabulary)
    classes: Optional[str] = None
    things: Optional[str] = None
    timeout_s: float = 120.0


@dataclass(frozen=True)
class ClientResult:
    out_dir: Path
    files: list[Path]
    images: int
    seconds: float

    def summary(self) -> str:
        return (f"segmented {self.images} image{'s' * (self.images != 1)} on the server in {self.seconds:.1f} s; "
                f"results in {self.out_dir}/")


def client_run(cfg: ClientConfig) -> ClientResult:
    """Every image of ``cfg`` through the server; the result files of ``cmpf run`` in ``cfg.out_dir``."""
    paths = [Path(p) for p in cfg.images]
    check_outputs(cfg.out_dir, [str(p) for p in paths])
    vocabulary = load_vocabulary(cfg.vocab, cfg.classes, cfg.things, required=False)
    ids = vocabulary_ids(cfg.vocab) if cfg.vocab else None
    image_ids = stem_image_ids(paths)  # cmpf run's image ids
    client = SegmentClient(cfg.url, cfg.protocol, cfg.timeout_s)
    tic = time.perf_counter()
    try:
        with Staging() as stage:
            writer: Optional[ResultWriter] = None
            out = stage.directory(cfg.out_dir, "--out")
            for path in paths:
                image = load_image(path)  # the pixels of the overlay; the server decodes the same bytes
                seg, used = client.segment(path.read_bytes(), vocabulary)
                if writer is None:
                    writer = ResultWriter(out, Categories.of(used, ids))
                writer.add(seg, image, path.stem, image_ids[path], path.name)
            assert writer is not None
            writer.finish()
    finally:
        client.close()
    return ClientResult(Path(cfg.out_dir), stage.committed, len(paths), time.perf_counter() - tic)
