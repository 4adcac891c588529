"""``cmpf bench``: the per-stage sweep over batch sizes and image shapes of one predictor.

Predictor + image + vocabulary + ``BenchConfig`` → ``BenchReport`` (rows of ``StageTiming``, one
set per (batch, shape), images/s of the end-to-end call, peak host RSS and device memory, the
environment block).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from cmpf.bench.environment import environment, peak_device_mib, peak_rss_mib
from cmpf.bench.stages import END_TO_END, StageTiming, benchmark_pipeline
from cmpf.errors import InputError
from cmpf.predictor import Predictor, options_with
from cmpf.vocabulary import Vocabulary

SCHEMA = "cmpf.bench/1"


@dataclass(frozen=True)
class BenchConfig:
    batches: tuple[int, ...] = (1,)
    shapes: tuple[Optional[tuple[int, int]], ...] = (None,)  # (H, W) fed without the official resize; None: as is
    warmup: int = 2
    iters: int = 10
    device: str = "cpu"
    cuda_events: bool = False

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise InputError(f"--batch {self.batches}: batch sizes must be >= 1, e.g. --batch 1,2,4")
        if self.cuda_events and not self.device.startswith("cuda"):
            raise InputError(f"--cuda-events needs a CUDA --device, not {self.device}; drop it or give --device cuda")
        if self.iters < 1 or self.warmup < 0:
            raise InputError("--iters must be >= 1 and --warmup >= 0")
        for s in self.shapes:
            if s is not None and (len(s) != 2 or min(s) < 1):
                raise InputError(f"--shapes: {s} is not HxW, e.g. --shapes 320x416,480x640")


@dataclass(frozen=True)
class BenchReport:
    model: str
    backend: str
    precision: str
    rows: list[StageTiming]
    memory: list[dict]  # per (batch, shape): peak RSS / device memory after it ran
    environment: dict = field(default_factory=dict)

    def throughput(self) -> list[dict]:
        """Images per second of the end-to-end call (median latency), per (batch, shape)."""
        return [{"batch": r.batch, "shape": None if r.shape is None else list(r.shape),
                 "images_per_s": 1e3 * r.batch / r.timing.median_ms} for r in self.rows if r.stage == END_TO_END]

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "model": self.model, "backend": self.backend, "precision": self.precision,
                "environment": self.environment, "stages": [r.to_json() for r in self.rows],
                "throughput": self.throughput(), "memory": self.memory,
                "notes": ["graph rows: inputs already on the device (host transfer excluded); "
                          "segment: end to end, host transfer included"]}


def run_bench(predictor: Predictor, image: torch.Tensor, vocabulary: Vocabulary, cfg: BenchConfig,
              precision: str = "fp32") -> BenchReport:
    """Every (batch, shape) of ``cfg``: stage latencies of ``predictor`` on copies of ``image``."""
    rows, memory = [], []
    for shape in cfg.shapes:
        options = predictor.options
        im = image
        if shape is not None:  # the graphs see exactly this size
            im = F.interpolate(image[None].float(), size=shape, mode="bilinear", align_corners=False)[0]
            im = im.round().clamp(0, 255).to(torch.uint8)
            options = options_with(options, resize=False)
        for batch in cfg.batches:
            rows += benchmark_pipeline(predictor.runners, predictor.cfg, im, vocabulary, warmup=cfg.warmup,
                                       iters=cfg.iters, options=options, device=cfg.device, batch=batch,
                                       cuda_events=cfg.cuda_events)
            memory.append({"batch": batch, "shape": None if shape is None else list(shape),
                           "peak_rss_mib": peak_rss_mib(), "peak_device_mib": peak_device_mib(cfg.device)})
    return BenchReport(predictor.cfg.name, str(predictor.backend), precision, rows, memory, environment(cfg.device))
