"""Do this CPU's int8 kernels compute what a Q/DQ graph says? Full-range and 7-bit weights, kernels vs the Q/DQ math.

    python benchmarks/int8_saturation.py --fp32 DIR/sam_image_encoder.fp32.onnx --tag tiny_epyc-avx2

Without VNNI, ONNX Runtime's x86 int8 matmuls multiply u8×s8 pairs with VPMADDUBSW, whose int16 sums
saturate; VNNI's instructions (and TensorRT) do not. The graph is quantised twice with cmpf's int8
recipe (``cmpf.precision.qdq``: symmetric, per-channel weights, minmax), once with 8-bit weights and once
with 7-bit ones (``cmpf quantize --reduce-range``, whose products cannot saturate), on seeded normal
inputs, and each file runs two ways on ONNX Runtime: with its optimisations (the int8 kernels) and
without (each Q/DQ pair as written, in fp32). Where the kernels' error exceeds the Q/DQ math's with 8-bit
weights but not with 7-bit ones, the gap is saturation. Writes ``results/int8_saturation_<tag>.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from cmpf.bench.environment import environment
from cmpf.doctor import cpu_rows
from cmpf.io import write_json, write_text
from cmpf.precision import qdq
from sam_int8_cpu import machine_line, onnxruntime_session, report_markdown

RESULTS = Path(__file__).parent / "results"


def _inputs(session, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded normals at the graph's input shapes (symbolic dims: 1)."""
    return {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
            for i in session.get_inputs()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fp32", type=Path, required=True, help="an fp32 graph cmpf exported")
    p.add_argument("--calib", type=int, default=4, help="seeded normal calibration inputs")
    p.add_argument("--tag", required=True, help="results as int8_saturation_<tag>.* (name the model and the machine)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    session = onnxruntime_session(args.fp32)
    feeds = [_inputs(session, rng) for _ in range(args.calib)]
    feed = _inputs(session, rng)
    reference = session.run(None, feed)[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cmpf-int8-saturation-") as tmp:
        for bits, reduce_range in ((8, False), (7, True)):
            path = Path(tmp) / f"int8_w{bits}.onnx"
            qdq.quantize(args.fp32, path, feeds, reduce_range=reduce_range)  # cmpf's recipe, as `cmpf quantize`
            error = {}
            for way, optimize in (("int8 kernels", True), ("Q/DQ in fp32", False)):
                out = onnxruntime_session(path, optimize).run(None, feed)[0]
                error[way] = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
            rows.append({"weight_bits": bits, "rel_error": error,
                         "kernels_over_math": error["int8 kernels"] / error["Q/DQ in fp32"]})
            print(f"{bits}-bit weights: {error}", flush=True)
    report = {"schema": "cmpf.int8_saturation/1", "graph": args.fp32.name,
              "calibration": f"{args.calib} seeded normals",
              "input": {k: list(v.shape) for k, v in feed.items()}, "rows": rows, "cpu": dict(cpu_rows()),
              "machine": environment()}
    stem = RESULTS / f"int8_saturation_{args.tag}"
    write_json(stem.with_suffix(".json"), report)
    write_text(stem.with_suffix(".md"), markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    return report_markdown(
        f"int8 kernels vs the Q/DQ math: {report['graph']} on ONNX Runtime",
        f"{machine_line(report)} int8: {report['cpu'].get('cpu int8', '?')}. Calibrated on {report['calibration']}; "
        f"errors against the fp32 file on one more.",
        ["weights", "L2-rel, int8 kernels", "L2-rel, Q/DQ in fp32", "kernels / math"],
        [[f"{r['weight_bits']}-bit", f"{r['rel_error']['int8 kernels']:.2e}", f"{r['rel_error']['Q/DQ in fp32']:.2e}",
          f"{r['kernels_over_math']:.2f}"] for r in report["rows"]])


if __name__ == "__main__":
    main()
