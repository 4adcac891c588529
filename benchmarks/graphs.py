"""Per-graph latency on this machine: eager PyTorch vs ONNX Runtime vs AOTInductor.

    python benchmarks/graphs.py --model tiny --formats onnx,aoti
    python benchmarks/graphs.py --model frozenseg-convnext-large --formats onnx --min-size 320 --max-size 416

Builds the model (random weights unless --checkpoint), exports every graph (torch.export once, then
ONNX and/or AOTInductor; export times are recorded too), captures each graph's inputs by running
the pipeline on the bundled sample image, then times every runner on those inputs (median and p90
after warm-up, through the same ``Runner`` call) and checks its parity. Writes
``results/graphs_<model>.json`` (rows + machine description) and ``results/graphs_<model>.md``
(``--markdown-from results/graphs_<model>.json`` prints that table again from the JSON alone).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from cmpf.bench.parity import capture_graph_inputs, format_table, graph_parity
from cmpf.bench.stages import time_graphs
from cmpf.sample import SAMPLE_CLASSES as DEMO_CLASSES, SAMPLE_IMAGE
from cmpf.export.aoti import export_aoti
from cmpf.model.graphs import graph_module, model_specs
from cmpf.export.manifest import producer_versions
from cmpf.export.onnx import export_onnx
from cmpf.export.program import TraceSizes, example_inputs, export_program
from cmpf.model import build_model
from cmpf.config import default_options
from cmpf.io import write_json, write_text
from cmpf.predictor import options_with
from cmpf.preprocess import load_image
from cmpf.runtime.torch_runner import torch_runners
from cmpf.vocabulary import parse_class_list
from reference_cpu import cpu_name  # a sibling script of this directory

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {"cpu": cpu_name() or "unknown", "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "versions": producer_versions(),
            "load_average_1_5_15min": list(os.getloadavg())}  # other work on the machine skews the timings


def export_runners(model, formats: list[str], directory: Path) -> tuple[dict, dict]:
    """Export every graph; returns {backend: {graph: runner}} and {graph: {format: seconds}}."""
    from cmpf.runtime.aoti_runner import AotiRunner
    from cmpf.runtime.onnxruntime_runner import OnnxRuntimeRunner

    runners: dict[str, dict] = {f: {} for f in formats}
    seconds: dict[str, dict[str, float]] = {}
    for graph, spec in model_specs(model).items():
        start = time.perf_counter()
        program = export_program(graph_module(model, graph), spec, example_inputs(spec, TraceSizes()))
        seconds[graph] = {"torch.export": time.perf_counter() - start}
        for fmt in formats:
            start = time.perf_counter()
            if fmt == "onnx":
                path = export_onnx(program, spec, directory / f"{graph}.fp32.onnx")[0]
                runners[fmt][graph] = OnnxRuntimeRunner(path, spec)
            else:
                path = export_aoti(program, directory / f"{graph}.fp32.pt2")
                runners[fmt][graph] = AotiRunner(path, spec)
            seconds[graph][fmt] = time.perf_counter() - start
            print(f"{graph}: {fmt} in {seconds[graph][fmt]:.0f} s", flush=True)
        del program
    return {("onnxruntime" if f == "onnx" else f): r for f, r in runners.items()}, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--checkpoint")
    p.add_argument("--formats", default="onnx,aoti")
    p.add_argument("--min-size", type=int, default=320, help="short side of the resized sample image")
    p.add_argument("--max-size", type=int, default=416, help="long side limit (CLIP input 320×416 by default)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--work-dir", help="where the exported files go (default: a temporary directory)")
    p.add_argument("--markdown-from", metavar="JSON", help="only print the Markdown of an existing report")
    args = p.parse_args()
    if args.markdown_from:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return
    logging.getLogger("onnxscript").setLevel(logging.ERROR)  # constant-folding notes of the ONNX optimizer

    torch.manual_seed(0)
    model = build_model(args.model, args.checkpoint)
    options = options_with(default_options(model.cfg), min_size=args.min_size, max_size=args.max_size)
    vocab = parse_class_list(DEMO_CLASSES)
    eager = torch_runners(model)
    inputs = capture_graph_inputs(eager, [load_image(SAMPLE_IMAGE)], vocab, model.cfg, options)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        backends, export_seconds = export_runners(model, args.formats.split(","), Path(tmp))
        machine_at_start = machine()
        rows = {"torch": time_graphs(eager, inputs, warmup=args.warmup, iters=args.iters)}
        parity = []
        for name, runners in backends.items():
            rows[name] = time_graphs(runners, inputs, warmup=args.warmup, iters=args.iters)
            parity += graph_parity(eager, runners, inputs)
    shapes = {g: {k: list(v.shape) for k, v in feed.items()} for g, feed in inputs.items()}
    weights = Path(args.checkpoint).name if args.checkpoint else "random"
    report = {"model": args.model, "weights": weights, "machine": machine_at_start,
              "clip_input": shapes["clip_image_encoder"]["pixel_values"], "input_shapes": shapes,
              "warmup": args.warmup, "iters": args.iters, "export_seconds": export_seconds,
              "latency": {b: [r.to_json() for r in rs] for b, rs in rows.items()},
              "parity": [r.to_json() for r in parity]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"graphs_{args.model}.json", report)
    print(write_markdown(report))


def markdown(report: dict) -> str:
    """The Markdown tables of a report (a pure function of the JSON, so they can be rebuilt from it)."""
    backends = list(report["latency"])
    timing = {b: {r["stage"]: r for r in rows} for b, rows in report["latency"].items()}
    worst: dict[tuple[str, str], float] = {}
    for r in report["parity"]:
        worst[(r["graph"], r["backend"])] = max(worst.get((r["graph"], r["backend"]), 0.0), r["rel_error"])
    latency = [[g] + [f"{timing[b][g]['median_ms']:.1f} ({timing[b][g]['p90_ms']:.1f})" for b in backends]
               + [worst[(g, b)] for b in backends[1:]] for g in timing["torch"]]
    steps = list(next(iter(report["export_seconds"].values())))
    exports = [[g] + [f"{t[s]:.0f}" for s in steps] for g, t in report["export_seconds"].items()]
    shapes = [[g, ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in feed.items())]
              for g, feed in report["input_shapes"].items()]
    m = report["machine"]
    return "\n".join([
        f"# Graph latency: {report['model']} ({report['weights']} weights)", "",
        f"Inputs captured by the pipeline on the sample image (CLIP input {report['clip_input']}); median (p90) ms "
        f"of {report['iters']} runs after {report['warmup']} warm-up; {m['cpu']}, {m['logical_cores']} logical "
        f"cores, torch {m['versions']['torch']}, onnxruntime {m['versions']['onnxruntime']}; load average "
        f"{m['load_average_1_5_15min'][0]:.1f} when timing started. Relative error: L2, against eager.", "",
        format_table(["graph"] + [f"{b} ms" for b in backends] + [f"{b} rel. error" for b in backends[1:]], latency),
        "", "Export time (s):", "", format_table(["graph"] + steps, exports),
        "", "Input shapes:", "", format_table(["graph", "inputs"], shapes), ""])


def write_markdown(report: dict) -> str:
    table = markdown(report)
    write_text(RESULTS / f"graphs_{report['model']}.md", table)
    return table


if __name__ == "__main__":
    main()
