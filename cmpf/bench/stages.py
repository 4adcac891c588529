"""Per-stage latency of the pipeline for one set of runners: preprocess, each graph, end to end.

Graphs are timed through their ``Runner`` call on the inputs a real image produces, so every
backend is measured the same way; preprocessing (shared by all backends) and the whole
``segment`` call (text classifier cached, as in ``cmpf run``) are timed separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from cmpf.bench.parity import capture_graph_inputs
from cmpf.bench.timing import Timing, time_call
from cmpf.config import InferenceOptions, ModelConfig
from cmpf.pipeline import preprocess, segment
from cmpf.runtime.base import Runner
from cmpf.text import TextCache
from cmpf.vocabulary import Vocabulary


@dataclass(frozen=True)
class StageTiming:
    stage: str  # "preprocess", a graph name, or "segment"
    backend: str
    timing: Timing

    def to_json(self) -> dict:
        return {"stage": self.stage, "backend": self.backend, **self.timing.to_json()}


def time_graphs(runners: Mapping[str, Runner], inputs: Mapping[str, Mapping[str, torch.Tensor]], *,
                warmup: int = 2, iters: int = 10) -> list[StageTiming]:
    """Latency of each runner on its captured inputs."""
    return [StageTiming(g, runners[g].backend, time_call(lambda g=g: runners[g](inputs[g]), warmup=warmup, iters=iters))
            for g in inputs]


def benchmark_pipeline(runners: Mapping[str, Runner], cfg: ModelConfig, image: torch.Tensor, vocabulary: Vocabulary,
                       *, warmup: int = 2, iters: int = 10, options: InferenceOptions = InferenceOptions(),
                       device: str | torch.device = "cpu") -> list[StageTiming]:
    """Stage latencies of ``segment`` on one uint8 (3, H, W) image."""
    backend = next(iter(runners.values())).backend
    prep = lambda: preprocess([image], cfg, options, device)  # noqa: E731
    rows = [StageTiming("preprocess", "torch", time_call(prep, warmup=warmup, iters=iters))]
    inputs = capture_graph_inputs(runners, [image], vocabulary, cfg, options, device)
    rows += time_graphs(runners, inputs, warmup=warmup, iters=iters)
    text = TextCache(runners["text_encoder"], options.text_batch)
    run = lambda: segment([image], vocabulary, runners, cfg, options, text_cache=text, device=device)  # noqa: E731
    rows.append(StageTiming("segment", backend, time_call(run, warmup=warmup, iters=iters)))
    return rows
