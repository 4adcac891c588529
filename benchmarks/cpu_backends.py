"""The SAM ViT-B image encoder at full size (1 × 3 × 1024 × 1024) on every CPU runner of one ONNX file.

    python benchmarks/cpu_backends.py --model frozenseg-convnext-large --iters 5
    python benchmarks/cpu_backends.py --onnx /tmp/sam/sam_image_encoder.fp32.onnx   # an exported file
    python benchmarks/cpu_backends.py --plot-from results/cpu_backends.json          # the PNG again

Without ``--onnx`` the graph is exported first with the repo's export API (random weights: timing
does not depend on them). Runners: ONNX Runtime with its default session options, ONNX Runtime
with ``cmpf``'s tuned options (idle threads sleep) and the same with spinning on, OpenVINO with the
f32 and the bf16 inference-precision hint (the runner refuses bf16 on a CPU without bf16 kernels;
then what OpenVINO itself compiles for the hint is recorded, untimed), and where the directory has
them (``cmpf quantize``) the int8 Q/DQ file on both runtimes and the bf16 file on OpenVINO. Each: load time, one warm-up
call, ``--iters`` timed calls through the same ``Runner`` call, one runner loaded at a time (each
holds gigabytes at this size): p50, p90, mean, min, the ratio of its p50 to ONNX Runtime default's,
and the L2-relative error of its output against ONNX Runtime default (fp32). Also which kernels
ran: OpenVINO's execution graph counted by ``layerType`` / ``runtimePrecision`` /
``primitiveType``, ONNX Runtime's profiled nodes by op type. Writes ``results/cpu_backends.json``
(with the machine, this process's nice value and the load average at start and end: other work on
the machine skews the timings) and ``results/cpu_backends.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import onnxruntime as ort
import torch

from cmpf.bench.environment import environment
from cmpf.bench.timing import summarize
from cmpf.errors import EnvironmentProblem, require
from cmpf.io import write_json
from cmpf.manifest import Manifest
from cmpf.runtime.onnxruntime_runner import OnnxRuntimeRunner, physical_cores, session_options
from cmpf.runtime.openvino_runner import OpenVinoRunner
from cmpf.tolerances import rel_error

RESULTS = Path(__file__).parent / "results"
GRAPH = "sam_image_encoder"


def export_sam(model: str, directory: Path) -> Path:
    """The manifest directory of ``model``'s SAM image encoder alone, exported with random weights."""
    from cmpf.export.api import ExportConfig, export_model

    start = time.perf_counter()
    export_model(ExportConfig(model, str(directory), graphs=(GRAPH,)), progress=False)
    print(f"exported {GRAPH} in {time.perf_counter() - start:.0f} s", flush=True)
    return directory


def runners(path: Path, spec, variants: dict[str, Path]) -> dict:
    """name -> a function that opens the runner (opened one at a time: each holds the weights); ``variants``:
    the directory's reduced-precision files of the graph (``cmpf quantize``) by precision."""
    found = {}
    if "int8" in variants:  # the same Q/DQ file on both runtimes (VNNI kernels where the CPU has them)
        found["onnxruntime tuned, int8 file"] = lambda: OnnxRuntimeRunner(variants["int8"], spec)
        found["openvino int8 file"] = lambda: OpenVinoRunner(variants["int8"], spec)
    if "bf16" in variants:  # bf16 casts in the graph, with the bf16 hint
        found["openvino bf16 file"] = lambda: OpenVinoRunner(variants["bf16"], spec, inference_precision="bf16")
    return {
        "onnxruntime default": lambda: OnnxRuntimeRunner(path, spec, options=ort.SessionOptions()),
        "onnxruntime tuned": lambda: OnnxRuntimeRunner(path, spec),  # cmpf's session: no spinning
        "onnxruntime tuned, spinning":
            lambda: OnnxRuntimeRunner(path, spec, options=session_options(spinning=True)),
        "openvino f32": lambda: OpenVinoRunner(path, spec),
        "openvino bf16 hint": lambda: OpenVinoRunner(path, spec, inference_precision="bf16"),
        **found,
    }


def openvino_kernels(compiled) -> dict:
    """Counts of a compiled model's execution-graph nodes by layer type, runtime precision and primitive."""
    nodes = [op.get_rt_info() for op in compiled.get_runtime_model().get_ops()]
    value = lambda info, key: info[key].astype(str) if key in info else "?"  # noqa: E731
    count = lambda keys: dict(Counter(" / ".join(value(n, k) for k in keys) for n in nodes).most_common())  # noqa: E731
    return {"inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
            "by_runtime_precision": count(("runtimePrecision",)),
            "by_layer_type_and_precision": count(("layerType", "runtimePrecision")),
            "by_primitive_type": count(("primitiveType",))}


def openvino_own_bf16(path: Path) -> dict:
    """What OpenVINO itself compiles for the bf16 hint (where the runner refuses it: no bf16 kernels)."""
    import openvino as ov
    import openvino.properties.hint as hints

    config = {hints.performance_mode: hints.PerformanceMode.LATENCY, hints.inference_precision: ov.Type.bf16}
    return openvino_kernels(ov.Core().compile_model(str(path), "CPU", config))


def onnxruntime_kernels(path: Path, spec, inputs) -> dict:
    """Op types of the nodes ONNX Runtime ran (one profiled call of the tuned session), and their share of time."""
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options()
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "ort")
        runner = OnnxRuntimeRunner(path, spec, options=options)
        runner(inputs)
        events = json.loads(Path(runner.session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    counts, micros = Counter(), Counter()
    for e in nodes:
        op = f"{e['args'].get('op_name', '?')} ({e['args'].get('provider', '?')})"
        counts[op] += 1
        micros[op] += e.get("dur", 0)
    total = sum(micros.values()) or 1
    return {"nodes_by_op_type": dict(counts.most_common()),
            "time_share_by_op_type": {op: round(us / total, 4) for op, us in micros.most_common()}}


def cpu_isa() -> list[str]:
    """The CPU's vector and matrix extensions that decide which kernels can run (AVX2, AVX-512, VNNI, BF16, AMX)."""
    wanted = ("avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
              "amx_int8")
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return [flag for flag in wanted if flag in flags]


def rss_mib() -> float:
    """Resident memory of this process now (MiB)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def measure(name: str, open_runner, inputs, warmup: int, iters: int) -> tuple[dict, object, dict]:
    """Load one runner, warm it up, time ``iters`` calls; one runner at a time (each holds gigabytes)."""
    start = time.perf_counter()
    runner = open_runner()
    row = {"runner": name, "load_s": time.perf_counter() - start, "load_average_1min_at_start": os.getloadavg()[0]}
    with torch.inference_mode():
        for _ in range(warmup):
            runner(inputs)
        times, outputs = [], {}
        for _ in range(iters):
            start = time.perf_counter()
            outputs = runner(inputs)
            times.append((time.perf_counter() - start) * 1e3)
    row.update(summarize(times).to_json(), runs_ms=times, rss_mib_after=rss_mib(),
               load_average_1min_at_end=os.getloadavg()[0])
    print(f"{name}: p50 {row['p50_ms']:.0f} ms, min {row['min_ms']:.0f} ms, load {row['load_s']:.1f} s, "
          f"rss {row['rss_mib_after']:.0f} MiB", flush=True)
    return row, runner, outputs


def plot(report: dict, path: Path) -> None:
    matplotlib = require("matplotlib", "bench", "the cpu_backends plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in report["results"] if "p50_ms" in row]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [r["runner"] for r in rows]
    ax.barh(names, [r["p50_ms"] / 1000 for r in rows], color="tab:blue", label="p50")
    ax.scatter([r["min_ms"] / 1000 for r in rows], names, color="black", marker="|", s=200, label="min", zorder=3)
    for i, r in enumerate(rows):
        error = max(r["l2_rel_error_vs_onnxruntime_default"].values())
        label = f"  {r['ratio_to_onnxruntime_default']:.2f}x, L2 err {error:.1e}"
        ax.text(r["p50_ms"] / 1000, i, label, va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per call")
    env = report["environment"]
    loads = [r[k] for r in rows for k in ("load_average_1min_at_start", "load_average_1min_at_end")]
    ax.set_title(f"SAM ViT-B image encoder 1x3x1024x1024, {env['cpu']}, {env['logical_cores']} cores "
                 f"(load average {min(loads):.1f}-{max(loads):.1f})", fontsize=9)
    ax.set_xlim(0, 1.35 * max(r["p50_ms"] for r in rows) / 1000)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="frozenseg-convnext-large")
    p.add_argument("--onnx", help="an exported sam_image_encoder.fp32.onnx (its directory's manifest.json beside it)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS / "cpu_backends.json"))
    p.add_argument("--plot-from", metavar="JSON", help="only draw the PNG of a report again (beside it)")
    args = p.parse_args()
    if args.plot_from:
        plot(json.loads(Path(args.plot_from).read_text()), Path(args.plot_from).with_suffix(".png"))
        return
    with tempfile.TemporaryDirectory(prefix="cmpf-cpu-backends-") as tmp:
        directory = Path(args.onnx).parent if args.onnx else export_sam(args.model, Path(tmp) / "sam")
        manifest = Manifest.read(directory)
        artifact = manifest.artifact(GRAPH, "onnx")
        variants = {p: manifest.artifact(GRAPH, "onnx", p).path for p in manifest.precisions(GRAPH, "onnx")
                    if p in ("int8", "bf16")}
        spec = artifact.graph
        image = torch.randn(1, 3, *spec.inputs[0].dims[2:], generator=torch.Generator().manual_seed(0))
        inputs = {spec.inputs[0].name: image}  # (1, 3, 1024, 1024)
        env = environment("cpu")
        rows, reference, kernels = [], None, {}
        for name, open_runner in runners(artifact.path, spec, variants).items():
            try:
                row, runner, outputs = measure(name, open_runner, inputs, args.warmup, args.iters)
            except EnvironmentProblem as e:  # bf16 on a CPU without bf16 kernels
                print(f"{name}: refused: {e}", flush=True)
                rows.append({"runner": name, "refused": str(e)})
                kernels[f"{name}, OpenVINO's own compile (not timed)"] = openvino_own_bf16(artifact.path)
                continue
            reference = reference or outputs  # ONNX Runtime default, the first
            row["l2_rel_error_vs_onnxruntime_default"] = {k: rel_error(v, reference[k]) for k, v in outputs.items()}
            rows.append(row)
            if isinstance(runner, OpenVinoRunner):
                kernels[name] = openvino_kernels(runner.compiled)
            runner.close()
            del runner, outputs
        kernels["onnxruntime tuned"] = onnxruntime_kernels(artifact.path, spec, inputs)
    timed = [row for row in rows if "p50_ms" in row]
    for row in timed:
        row["ratio_to_onnxruntime_default"] = row["p50_ms"] / timed[0]["p50_ms"]
    report = {"graph": GRAPH, "model": args.model, "input": list(image.shape),
              "weights": f"{'the --onnx file' if args.onnx else 'random'}'s (timing does not depend on them)",
              "files": {p: Path(f).name for p, f in {"fp32": artifact.path, **variants}.items()},
              "physical_cores": physical_cores(),
              "cpu_isa": cpu_isa(), "environment": env, "nice": os.getpriority(os.PRIO_PROCESS, 0),
              "load_average_1_5_15min_at_end": list(os.getloadavg()),
              "results": rows, "kernels": kernels,
              "note": "wall clock of one call on one image after warm-up, one runner loaded at a time; "
                      "the error is the L2-relative error of each output against ONNX Runtime default (fp32)"}
    out = write_json(Path(args.out), report)
    plot(report, Path(out).with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
