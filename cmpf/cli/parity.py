"""``cmpf parity --artifacts DIR --backend B``: eager vs a backend per graph; exit 1 out of tolerance."""

from __future__ import annotations

from cmpf.cli import bench, common
from cmpf.errors import CheckFailed


def add(sub) -> None:
    p = sub.add_parser("parity", help="eager vs a backend per graph; exits 1 when out of tolerance")
    p.add_argument("--artifacts", required=True, help="directory written by `cmpf export`")
    common.add_backend(p, choices=("onnxruntime", "aoti"))
    bench.add_inputs(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from cmpf.backend import Backend
    from cmpf.bench.parity import capture_graph_inputs, format_table, graph_parity
    from cmpf.predictor import ModelSource, load_predictor

    source = ModelSource(artifacts=args.artifacts)
    reference = load_predictor(source, Backend.TORCH, args.device)
    candidate = load_predictor(source, args.backend or Backend.ONNXRUNTIME, args.device)
    image, vocabulary, options = bench.inputs(args, reference)
    inputs = capture_graph_inputs(reference.runners, [image], vocabulary, reference.cfg, options, device=args.device)
    rows = graph_parity(reference.runners, candidate.runners, inputs)
    print(format_table(["graph", "output", "backend", "rel. error", "tolerance", "mask IoU", "ok"],
                       [[r.graph, r.output, r.backend, r.rel_error, r.tolerance,
                         "-" if r.mask_iou is None else f"{r.mask_iou:.4f}", "yes" if r.ok else "NO"] for r in rows]))
    if args.json:
        from cmpf.io import write_json

        print(f"wrote {write_json(args.json, [r.to_json() for r in rows])}")
    failed = [f"{r.graph}.{r.output}" for r in rows if not r.ok]
    if failed:
        raise CheckFailed(f"out of tolerance: {', '.join(failed)}")
    return 0
