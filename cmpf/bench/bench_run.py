"""``cmpf bench``: the per-stage sweep over batch sizes and image shapes of one predictor.

Predictor + image + vocabulary + ``BenchConfig`` → ``BenchReport`` (rows of ``StageTiming``, one
set per (batch, shape), images/s of the end-to-end call, peak host RSS and device memory, the
environment block, the settings and notes that say how it was timed). ``cmpf.bench.matrix`` runs
this once per backend × precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from cmpf.backend import Backend
from cmpf.bench.environment import environment, peak_device_mib, peak_rss_mib, reset_peak_device
from cmpf.bench.stages import END_TO_END, StageTiming, benchmark_pipeline
from cmpf.bench.timing import TimingMode
from cmpf.errors import InputError
from cmpf.manifest import Manifest
from cmpf.predictor import ModelSource, Predictor, options_with
from cmpf.vocabulary import Vocabulary

SCHEMA = "cmpf.bench/1"
MATRIX_SCHEMA = "cmpf.bench-matrix/1"  # several of them: cmpf.bench.matrix


@dataclass(frozen=True)
class BenchConfig:
    batches: tuple[int, ...] = (1,)
    shapes: tuple[Optional[tuple[int, int]], ...] = (None,)  # (H, W) fed without the official resize; None: as is
    warmup: int = 2
    iters: int = 10
    device: str = "cpu"
    cuda_events: bool = False
    host_transfer: bool = False  # graph rows: inputs from host memory and outputs back (a no-op on CPU)
    cuda_graph: bool = False  # graph rows: CUDA-graph replays where the runner allows capture

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise InputError(f"--batch {self.batches}: batch sizes must be >= 1, e.g. --batch 1,2,4")
        for flag, on in (("--cuda-events", self.cuda_events), ("--cuda-graph", self.cuda_graph)):
            if on and not self.device.startswith("cuda"):
                raise InputError(f"{flag} needs a CUDA --device, not {self.device}; drop it or give --device cuda")
        if self.iters < 1 or self.warmup < 0:
            raise InputError("--iters must be >= 1 and --warmup >= 0")
        for s in self.shapes:
            if s is not None and (len(s) != 2 or min(s) < 1):
                raise InputError(f"--shapes: {s} is not HxW, e.g. --shapes 320x416,480x640")

    @property
    def mode(self) -> TimingMode:
        return TimingMode(self.cuda_events, self.host_transfer, self.cuda_graph)

    def settings(self) -> dict:
        """How the report was timed, as its JSON records it (``--compare`` flags differences)."""
        return {"warmup": self.warmup, "iters": self.iters, "device": self.device, "timer": self.mode.timer,
                "host_transfer": self.host_transfer, "cuda_graph": self.cuda_graph}

    def notes(self) -> list[str]:
        """What the numbers include, in words (the Markdown's notes)."""
        on_cpu = not self.device.startswith("cuda")
        if not self.host_transfer:
            transfer = "graph rows: inputs already on the device (host transfer excluded)"
        elif on_cpu:
            transfer = (f"graph rows: host transfer included, a no-op on --device {self.device} (inputs and "
                        f"outputs already in host memory)")
        else:
            transfer = "graph rows: host transfer included (inputs from pinned host memory, outputs copied back)"
        timer = ("timer: CUDA events around each call (device time)" if self.cuda_events
                 else "timer: wall clock, synchronised at the boundaries of each call")
        notes = [transfer + "; segment: end to end, host transfer included", timer]
        if self.cuda_graph:
            notes.append("graph rows: CUDA-graph replays, one capture per graph and shape, where the runner allows "
                         "it (rows with cuda_graph false say why not)")
        return notes


@dataclass(frozen=True)
class BenchReport:
    model: str
    backend: str
    precision: str
    rows: list[StageTiming]
    memory: list[dict]  # per (batch, shape): peak RSS / device memory after it ran
    environment: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # BenchConfig.settings()
    notes: list[str] = field(default_factory=list)
    plan: Optional[dict[str, str]] = None  # {graph: precision of the file it ran}; None: the eager model

    def throughput(self) -> list[dict]:
        """Images per second of the end-to-end call (median latency), per (batch, shape)."""
        return [{"batch": r.batch, "shape": None if r.shape is None else list(r.shape),
                 "images_per_s": 1e3 * r.batch / r.timing.median_ms} for r in self.rows if r.stage == END_TO_END]

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "model": self.model, "backend": self.backend, "precision": self.precision,
                "environment": self.environment, "stages": [r.to_json() for r in self.rows],
                "plan": self.plan, "settings": self.settings, "throughput": self.throughput(),
                "memory": self.memory, "notes": self.notes + _row_notes(self.rows)}


def _row_notes(rows: list[StageTiming]) -> list[str]:
    """The distinct per-row notes (e.g. a runner left uncaptured), once each."""
    seen: dict[str, None] = {}
    for r in rows:
        if r.note:
            seen.setdefault(f"{r.stage}: {r.note}", None)
    return list(seen)


def precision_plan(source: ModelSource, backend: Backend) -> Optional[dict[str, str]]:
    """{graph: precision} of the files ``backend`` runs from ``source`` (its ``--precision`` through the
    manifest); None for the eager model."""
    if source.artifacts is None or backend.format is None:
        return None
    from cmpf.runtime import RUNTIME_PRECISIONS  # the precisions a backend applies itself (OpenVINO's bf16)

    return Manifest.read(source.artifacts).runtime_plan(backend.format, source.precision,
                                                        RUNTIME_PRECISIONS.get(backend, ()))


def run_bench(predictor: Predictor, image: torch.Tensor, vocabulary: Vocabulary, cfg: BenchConfig,
              source: Optional[ModelSource] = None) -> BenchReport:
    """Every (batch, shape) of ``cfg``: stage latencies of ``predictor`` on copies of ``image``.

    Args:
        source: what ``predictor`` was loaded from, for the report's precision and per-graph plan.
    """
    rows, memory = [], []
    for shape in cfg.shapes:
        options = predictor.options
        im = image
        if shape is not None:  # the graphs see exactly this size
            im = F.interpolate(image[None].float(), size=shape, mode="bilinear", align_corners=False)[0]
            im = im.round().clamp(0, 255).to(torch.uint8)
            options = options_with(options, resize=False)
        for batch in cfg.batches:
            reset_peak_device(cfg.device)  # the device peak is per (batch, shape); host RSS can only grow
            rows += benchmark_pipeline(predictor.runners, predictor.cfg, im, vocabulary, warmup=cfg.warmup,
                                       iters=cfg.iters, options=options, device=cfg.device, batch=batch,
                                       mode=cfg.mode)
            memory.append({"batch": batch, "shape": None if shape is None else list(shape),
                           "peak_rss_mib": peak_rss_mib(), "peak_device_mib": peak_device_mib(cfg.device)})
    precision = (source.precision if source else None) or "fp32"
    plan = precision_plan(source, predictor.backend) if source else None
    return BenchReport(predictor.cfg.name, str(predictor.backend), precision, rows, memory, environment(cfg.device),
                       cfg.settings(), cfg.notes(), plan)
