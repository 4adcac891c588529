"""Latency of one call: warm-up, then timed repeats; percentiles, mean, std and min in milliseconds.

CUDA work is synchronised at the boundaries of every timed call, so a runner is measured from
inputs on the device to outputs on the device, the same way for every backend. With
``cuda_events`` (a CUDA device) each call is also bracketed by CUDA events and the device time is
what is reported; on CPU the wall clock is. ``TimingMode`` gathers the switches of how a bench times
(events or wall clock, host transfer, CUDA-graph replay).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class TimingMode:
    """How ``cmpf bench`` times (how much: warm-up and iterations, apart)."""

    cuda_events: bool = False  # device time between CUDA events (a CUDA device) instead of the wall clock
    host_transfer: bool = False  # graph rows: inputs from host memory, outputs back to it (no-op on CPU)
    cuda_graph: bool = False  # graph rows: replays of a torch.cuda.CUDAGraph capture, where the runner allows

    @property
    def timer(self) -> str:
        return "cuda-events" if self.cuda_events else "wall"


@dataclass(frozen=True)
class Timing:
    median_ms: float  # p50
    p90_ms: float
    mean_ms: float
    min_ms: float
    iters: int
    p95_ms: float = math.nan
    p99_ms: float = math.nan
    std_ms: float = math.nan
    max_ms: float = math.nan

    @property
    def p50_ms(self) -> float:
        return self.median_ms

    def to_json(self) -> dict:
        return {"median_ms": self.median_ms, "p50_ms": self.median_ms, "p90_ms": self.p90_ms,
                "p95_ms": self.p95_ms, "p99_ms": self.p99_ms, "mean_ms": self.mean_ms, "std_ms": self.std_ms,
                "min_ms": self.min_ms, "max_ms": self.max_ms, "iters": self.iters}


def percentile(times: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics."""
    ordered = sorted(times)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(times: list[float]) -> Timing:
    """A ``Timing`` of per-call milliseconds."""
    if not times:
        raise ValueError("no timed calls; give iters >= 1")
    std = statistics.stdev(times) if len(times) > 1 else 0.0
    return Timing(statistics.median(times), percentile(times, 90), statistics.fmean(times), min(times), len(times),
                  percentile(times, 95), percentile(times, 99), std, max(times))


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], *, warmup: int = 2, iters: int = 10, cuda_events: bool = False) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``iters`` timed ones (synchronised)."""
    if iters < 1:
        raise ValueError("iters must be >= 1")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync()
        times = []
        for _ in range(iters):
            if cuda_events:
                start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start_ev.record()
                fn()
                end_ev.record()
                torch.cuda.synchronize()
                times.append(start_ev.elapsed_time(end_ev))
                continue
            start = time.perf_counter()
            fn()
            _sync()
            times.append((time.perf_counter() - start) * 1e3)
    return summarize(times)
