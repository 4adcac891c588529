"""Which ops each graph must keep in fp32: fp16 error and ONNX Runtime latency per candidate keep-list.

    python benchmarks/precision_keep_lists.py --artifacts out/tiny
    python benchmarks/precision_keep_lists.py --artifacts out/frozenseg --min-size 320 --max-size 416

For every graph of an artifact directory (``cmpf export``) and every keep-list of
``cmpf.precision.fp16.CANDIDATE_KEEP_LISTS``: convert the fp32 file to fp16 with that keep-list, run
both on ONNX Runtime on the inputs the pipeline gives the graph for the bundled sample image, and
record the worst L2-relative error over the outputs and the median latency. The chosen keep-list
per graph is the smallest whose error is within the fp16 row of the tolerance table. Writes
``results/precision_keep_lists_<model>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from cmpf.bench.parity import capture_graph_inputs, format_table
from cmpf.sample import SAMPLE_IMAGE
from cmpf.io import write_json, write_text
from cmpf.precision.fp16 import CANDIDATE_KEEP_LISTS, to_fp16
from cmpf.predictor import ModelSource, load_predictor, options_with
from cmpf.preprocess import load_image
from cmpf.tolerances import rel_error, rel_tolerance
from cmpf.vocabulary import load_vocabulary
from cmpf.bench.environment import environment as machine

RESULTS = Path(__file__).parent / "results"


def _time(session: ort.InferenceSession, feed: dict, repeats: int) -> float:
    session.run(None, feed)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(artifacts: str, repeats: int, min_size=None, max_size=None, vocab=None, classes=None) -> dict:
    predictor = load_predictor(ModelSource(artifacts=artifacts), "onnxruntime")
    options = options_with(predictor.options, min_size=min_size, max_size=max_size)
    vocabulary = predictor.resolve_vocabulary(load_vocabulary(vocab, classes, required=False))
    inputs = capture_graph_inputs(predictor.runners, [load_image(SAMPLE_IMAGE)], vocabulary, predictor.cfg, options)
    bound = rel_tolerance("onnxruntime", "fp16")
    rows, chosen = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for graph, feed in inputs.items():
            source = Path(artifacts) / f"{graph}.fp32.onnx"
            feed_np = {k: v.cpu().numpy() for k, v in feed.items()}
            fp32 = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
            ref = fp32.run(None, feed_np)
            base_ms = _time(fp32, feed_np, repeats) * 1e3
            for name, keep in CANDIDATE_KEEP_LISTS.items():
                out = Path(tmp) / f"{graph}.{name}.onnx"
                onnx.save(to_fp16(onnx.load(str(source)), keep), str(out))
                options = ort.SessionOptions()  # ORT_ENABLE_ALL crashes on fp16 text encoders (cmpf.precision.api)
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT
                session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
                got = session.run(None, feed_np)
                errors = [float(rel_error(np.asarray(g, np.float64), np.asarray(r, np.float64)))
                          for g, r in zip(got, ref) if np.asarray(r).dtype.kind == "f"]
                worst = max(errors) if errors else 0.0
                worst = float("inf") if not np.isfinite(worst) else worst
                rows.append({"graph": graph, "keep_list": name, "keep_ops": list(keep), "worst_rel_error": worst,
                             "fp16_ms": _time(session, feed_np, repeats) * 1e3, "fp32_ms": base_ms,
                             "within_fp16_row": worst <= bound})
                if graph not in chosen and worst <= bound:
                    chosen[graph] = name
    return {"schema": "cmpf.precision_keep_lists/1", "model": predictor.cfg.name, "bound": bound,
            "rows": rows, "chosen": chosen, "machine": machine()}


def markdown(report: dict) -> str:
    table = format_table(["graph", "keep-list", "worst rel", "fp16 ms", "fp32 ms", "within"],
                         [[r["graph"], r["keep_list"], r["worst_rel_error"], f"{r['fp16_ms']:.1f}",
                           f"{r['fp32_ms']:.1f}", "yes" if r["within_fp16_row"] else "no"] for r in report["rows"]])
    chosen = "\n".join(f"- {g}: {k}" for g, k in report["chosen"].items())
    return (f"# fp16 keep-lists, {report['model']}\n\nBound (fp16 row): {report['bound']:g}. Machine: "
            f"{report['machine']['cpu']}.\n\n{table}\n\nChosen (smallest within the bound):\n{chosen}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-size", type=int)
    p.add_argument("--max-size", type=int)
    p.add_argument("--vocab", help="vocabulary file (default: the export's)")
    p.add_argument("--classes", help="inline vocabulary 'cat;dog,puppy' (default: the export's)")
    args = p.parse_args()
    report = measure(args.artifacts, args.repeats, args.min_size, args.max_size, args.vocab, args.classes)
    stem = RESULTS / f"precision_keep_lists_{report['model']}"
    write_json(stem.with_suffix(".json"), report)
    write_text(stem.with_suffix(".md"), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
