"""Fusioner speed: per graph call, per window, per image, and what the text-encoder cache saves.

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

    .venv/bin/python benchmarks/fusioner_speed.py --preset tiny-fusioner --backends torch,onnxruntime \
        --out benchmarks/results/fusioner_speed_tiny.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from cmpf.bench.environment import environment, peak_rss_mib
from cmpf.bench.timing import time_call
from cmpf.fusioner import SegmentOptions, TextEmbeddingCache, build_model, segment
from cmpf.fusioner.graphs import FusionerTorchRunner, graph_specs
from cmpf.fusioner.inference import normalise, window_grid
from cmpf.fusioner.prompts import tokenize_class
from cmpf.fusioner.run import FusionerSource, RunnerGraphs, load_graphs


def graphs_for(backend: str, model, workdir: Path) -> RunnerGraphs:
    if backend == "torch":
        return RunnerGraphs({g: FusionerTorchRunner(model, g) for g in graph_specs(model.cfg)}, model.cfg)
    from cmpf.export.api import ExportConfig
    from cmpf.fusioner.export import export_fusioner

    out = workdir / "export"
    if not out.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-weights note
            export_fusioner(ExportConfig(model.cfg.name, str(out), formats=("onnx",)), model=model, progress=False)
    return load_graphs(FusionerSource(artifacts=str(out), backend=backend))[0]


def bench_backend(graphs: RunnerGraphs, image: np.ndarray, names: list[str], warmup: int, iters: int) -> dict:
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
        print(f"  {name:26s} p50 {out[name]['median_ms']:10.1f} ms", flush=True)
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny-fusioner")
    p.add_argument("--backends", default="torch,onnxruntime")
    p.add_argument("--size", default="375x500", help="image HxW (375x500: a PASCAL image, 3x3 windows)")
    p.add_argument("--classes", default="cat;dog;person")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/fusioner_speed_tiny.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = (int(v) for v in args.size.split("x"))
    image = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    names = [n.strip() for n in args.classes.split(";") if n.strip()]
    model = build_model(args.preset)
    workdir = Path(tempfile.mkdtemp(prefix="fusioner-speed-"))
    results = {}
    try:
        for backend in args.backends.split(","):
            print(f"{args.preset} on {backend}:", flush=True)
            results[backend] = bench_backend(graphs_for(backend, model, workdir), image, names, args.warmup,
                                             args.iters)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "benchmark": "fusioner_speed", "preset": args.preset, "model": dataclasses.asdict(model.cfg),
        "image_hw": [h, w], "classes": names, "warmup": args.warmup, "iters": args.iters, "weights": "random",
        "environment": environment("cpu"), "peak_rss_mib": peak_rss_mib(), "backends": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
