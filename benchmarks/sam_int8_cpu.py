"""SAM ViT-B's image encoder alone on this CPU: fp32 and int8 files on ONNX Runtime and OpenVINO.

    python benchmarks/sam_int8_cpu.py --artifacts DIR --tag epyc-avx2

Whether int8 pays on a CPU depends on its int8 dot-product units (VNNI / AMX; ``cmpf doctor`` lists
them): the question this answers for the graph that is 75 % of the full model's time. ``DIR`` holds
``sam_image_encoder.fp32.onnx`` and ``.int8.onnx`` (``cmpf quantize --precision sam_image_encoder=int8``);
the input is one seeded normal 1×3×1024×1024 array (timing does not depend on the values), OpenVINO
compiled static at that shape (as cmpf's runner does), one warm-up and ``--repeats`` timed calls each.
A last row runs the int8 file on ONNX Runtime with its graph optimisations off: each Q/DQ pair then runs
as written, in fp32 around fp32 matmuls, so its error is the quantisation's own and the gap to the other
int8 rows is the int8 kernels' (AVX2's u8×s8 products saturate in int16; VNNI's do not). Writes
``results/sam_int8_cpu_<tag>.json`` and ``.md`` with the machine and the CPU's units.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np

from cmpf.bench.environment import environment
from cmpf.doctor import cpu_rows
from cmpf.io import write_json, write_text

RESULTS = Path(__file__).parent / "results"
SHAPE = (1, 3, 1024, 1024)


def timed(call, repeats: int) -> tuple[list[float], np.ndarray]:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return times, out


def onnxruntime_session(path: Path, optimize: bool = True):
    """An ONNX Runtime CPU session; ``optimize=False``: no graph optimisation (Q/DQ pairs run as written, in fp32)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnxruntime_call(path: Path, x: np.ndarray, optimize: bool = True):
    session = onnxruntime_session(path, optimize)
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})[0]


def openvino_call(path: Path, x: np.ndarray, precision_hint: str | None = None):
    """A static-shape OpenVINO CPU call; ``precision_hint`` (``f32``, ``bf16``) sets the inference precision."""
    import openvino as ov
    import openvino.properties.hint as hints

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0]: ov.PartialShape(list(x.shape))})
    config = {hints.performance_mode: hints.PerformanceMode.LATENCY}
    if precision_hint:
        config[hints.inference_precision] = getattr(ov.Type, precision_hint)
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return lambda: request.infer({0: x})[compiled.outputs[0]].copy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tag", required=True, help="results as sam_int8_cpu_<tag>.* (name the machine)")
    args = p.parse_args()
    x = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    rows, reference = [], None
    path = str(Path(args.artifacts) / "sam_image_encoder.{}.onnx")
    cases = [("onnxruntime", "fp32", onnxruntime_call), ("openvino", "fp32", openvino_call),
             ("onnxruntime", "int8", onnxruntime_call), ("openvino", "int8", openvino_call),
             ("onnxruntime, Q/DQ in fp32", "int8", partial(onnxruntime_call, optimize=False))]
    for backend, precision, make in cases:
        times, out = timed(make(Path(path.format(precision)), x), args.repeats)
        reference = out if reference is None else reference
        rows.append({"backend": backend, "precision": precision, "p50_s": statistics.median(times),
                     "min_s": min(times), "times_s": times,
                     "rel_error_vs_first": float(np.linalg.norm(out - reference) / np.linalg.norm(reference))})
        print(f"{backend}:{precision}: p50 {rows[-1]['p50_s']:.2f} s", flush=True)
    for r in rows:
        r["speedup_vs_first"] = rows[0]["p50_s"] / r["p50_s"]
    report = {"schema": "cmpf.sam_int8_cpu/1", "graph": "sam_image_encoder", "input": "x".join(map(str, SHAPE)),
              "repeats": args.repeats, "rows": rows, "cpu": dict(cpu_rows()), "machine": environment()}
    stem = RESULTS / f"sam_int8_cpu_{args.tag}"
    write_json(stem.with_suffix(".json"), report)
    write_text(stem.with_suffix(".md"), markdown(report))
    print(markdown(report))


def machine_line(report: dict) -> str:
    """The CPU, its units and the load, as the reports' first sentence."""
    cpu, m = report["cpu"], report["machine"]
    return (f"{cpu['cpu']}: {cpu['cpu features']}; {m['logical_cores']} logical cores, load average at the end "
            f"{m['load_average_1_5_15min'][0]:.2f}.")


def report_markdown(title: str, intro: str, header: list[str], rows: list[list[str]]) -> str:
    """A results page: a title, a paragraph (the machine first) and one table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    return f"# {title}\n\n{intro}\n\n" + "\n".join(lines) + "\n"


def markdown(report: dict) -> str:
    return report_markdown(
        f"{report['graph']} ({report['input']}) on this CPU, fp32 vs int8",
        f"{machine_line(report)} int8: {report['cpu'].get('cpu int8', '?')}. {report['repeats']} timed calls after a "
        "warm-up.",
        ["backend", "precision", "p50 s", "min s", "speed-up vs first", "L2-rel vs first"],
        [[r["backend"], r["precision"], f"{r['p50_s']:.2f}", f"{r['min_s']:.2f}", f"{r['speedup_vs_first']:.2f}",
          f"{r['rel_error_vs_first']:.1e}"] for r in report["rows"]])

if __name__ == "__main__":
    main()
