"""Latency of one call: warm-up, then timed repeats; median and p90 in milliseconds.

CUDA work is synchronised at the boundaries of every timed call, so a runner is measured from
inputs on the device to outputs on the device, the same way for every backend.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    iters: int

    def to_json(self) -> dict:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "mean_ms": self.mean_ms,
                "min_ms": self.min_ms, "iters": self.iters}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], *, warmup: int = 2, iters: int = 10) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``iters`` timed ones (wall clock, synchronised)."""
    if iters < 1:
        raise ValueError("iters must be >= 1")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            _sync()
            times.append((time.perf_counter() - start) * 1e3)
    p90 = statistics.quantiles(times, n=10, method="inclusive")[-1] if iters > 1 else times[0]
    return Timing(statistics.median(times), p90, statistics.fmean(times), min(times), iters)
