"""Fusioner speed (``cmpf bench`` with a Fusioner source; ``benchmarks/fusioner_speed.py``): per graph, window, image.

Random weights (timing does not depend on them). Rows, each through the same runners ``cmpf run`` uses
(``cmpf.fusioner.run.RunnerGraphs``):
- ``visual_encoder``: one 224 window (batch 1); ``text_encoder``: one class name (its 32 prompts);
- ``fusion_decoder_k1`` / ``_kK``: one window's fusion + decoder + head with 1 / K classes;
- ``window_per_class`` / ``window_joint``: one window end to end (visual + K fusion passes / one pass);
- ``image_per_class_cached`` / ``image_joint_cached``: the whole sliding window over an HxW image with the
  class embeddings cached (``TextEmbeddingCache``, as ``cmpf run`` does after the first image);
- ``image_per_class_uncached``: the same with a fresh cache per image (the K names encoded once per image).
The official code re-encodes the text on every window (``FUSIONER_SPEC`` fact 3), i.e. windows x K text
calls per image; ``official_text_per_image_ms`` is that count times the measured text-encoder row.
"""

from __future__ import annotations

import numpy as np

from cmpf.bench.timing import time_call
from cmpf.fusioner.config import SegmentOptions
from cmpf.fusioner.inference import TextEmbeddingCache, normalise, segment, window_grid
from cmpf.fusioner.prompts import tokenize_class
from cmpf.fusioner.run import RunnerGraphs


def bench_fusioner(graphs: RunnerGraphs, image: np.ndarray, names: list[str], warmup: int = 1, iters: int = 5,
                   log=print) -> dict:
    """The rows of the module docstring for one backend's graphs, ``derived`` counts and savings; ms."""
    s = graphs.cfg.window_size
    crop = normalise(image[:s, :s])
    tokens = graphs.encode_image(crop)
    text = TextEmbeddingCache(graphs).embed(names)
    ids = tokenize_class(names[0])
    k = len(names)
    per_class = SegmentOptions(mode="per-class")
    joint = SegmentOptions(mode="joint")
    warm = TextEmbeddingCache(graphs)
    warm.embed(names)
    rows = {
        "visual_encoder": lambda: graphs.encode_image(crop),
        "text_encoder": lambda: graphs.encode_class(ids),
        "fusion_decoder_k1": lambda: graphs.segment_window(tokens, text[:1]),
        f"fusion_decoder_k{k}": lambda: graphs.segment_window(tokens, text),
        "window_per_class": lambda: [graphs.segment_window(graphs.encode_image(crop), text[j:j + 1])
                                     for j in range(k)],
        "window_joint": lambda: graphs.segment_window(graphs.encode_image(crop), text),
        "image_per_class_cached": lambda: segment(graphs, image, names, per_class, text_cache=warm),
        "image_joint_cached": lambda: segment(graphs, image, names, joint, text_cache=warm),
        "image_per_class_uncached": lambda: segment(graphs, image, names, per_class),
    }
    out = {}
    for name, fn in rows.items():
        out[name] = time_call(fn, warmup=warmup, iters=iters).to_json()
        if log:
            log(f"  {name:26s} p50 {out[name]['median_ms']:10.1f} ms")
    windows = len(window_grid(image.shape[0], image.shape[1], s, per_class.window_stride(s)))
    text_ms = out["text_encoder"]["median_ms"]
    out["derived"] = {
        "windows_per_image": windows, "classes": k,
        "text_calls_per_image": {"cmpf_run_cached": 0, "uncached": k, "official_per_window": windows * k},
        "official_text_per_image_ms": windows * k * text_ms,
        "cache_saves_per_image_ms": out["image_per_class_uncached"]["median_ms"]
        - out["image_per_class_cached"]["median_ms"],
    }
    return out


def to_markdown(report: dict) -> str:
    lines = ["| row | p50 ms | p90 ms |", "|---|---|---|"]
    lines += [f"| {name} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |" for name, r in report.items() if name != "derived"]
    d = report["derived"]
    lines += ["", f"{d['windows_per_image']} windows, {d['classes']} classes; text-encoder calls per image: "
                  f"{d['text_calls_per_image']}; the cache saves {d['cache_saves_per_image_ms']:.1f} ms per image; "
                  f"the official per-window re-encoding would add {d['official_text_per_image_ms']:.1f} ms"]
    return "\n".join(lines)
