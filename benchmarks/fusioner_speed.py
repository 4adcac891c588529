"""Fusioner speed per graph, window and image, and what the text-encoder cache saves, for several backends.

Random weights (timing does not depend on them); the rows are ``cmpf.fusioner.bench.bench_fusioner``'s
(``cmpf bench --model tiny-fusioner`` runs one backend of them); this script runs several backends of one
preset, the ONNX ones from a temporary export, and writes the JSON with the machine attached.

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
from cmpf.fusioner import build_model
from cmpf.fusioner.bench import bench_fusioner
from cmpf.fusioner.graphs import FusionerTorchRunner, graph_specs
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
            results[backend] = bench_fusioner(graphs_for(backend, model, workdir), image, names, args.warmup,
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
