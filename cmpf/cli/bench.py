"""``cmpf bench``: per-stage latency percentiles, images/s and memory of one backend, or of a backend × precision
matrix (``--backend onnxruntime,openvino --precision fp32,int8``); ``--compare A.json B.json``."""

from __future__ import annotations

import argparse

from cmpf.backend import BACKEND_NAMES
from cmpf.cli import common
from cmpf.errors import InputError


def add(sub) -> None:
    p = sub.add_parser("bench", help="per-stage latency (p50/p90/p95/p99, mean, std, min), images/s and peak memory "
                                     "of one backend, or of every backend x precision of --backend A,B --precision "
                                     "P,Q in one report; --compare A.json B.json prints ratios")
    common.add_source(p)
    p.add_argument("--backend", metavar="B[,B...]",
                   help=f"runner(s) of the graphs: {', '.join(BACKEND_NAMES)}; several (comma-separated), or several "
                        f"--precision values, bench every combination into one report with ratios to the first "
                        f"(default: onnxruntime with --artifacts, torch with --model)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    p.add_argument("--iters", type=int, default=10, help="timed calls (default: 10)")
    p.add_argument("--batch", default="1", help="batch sizes to sweep, e.g. 1,2,4 (default: 1)")
    p.add_argument("--shapes", help="image sizes HxW fed to the graphs without the official resize, e.g. "
                                    "320x416,480x640 (default: the image through the official resize)")
    p.add_argument("--cuda-events", action="store_true", help="time with CUDA events (a CUDA --device)")
    p.add_argument("--host-transfer", choices=("exclude", "include"), default="exclude",
                   help="graph rows: inputs already on the device (exclude), or from host memory with outputs copied "
                        "back (include; a no-op on CPU, as the report says) (default: exclude; the end-to-end row "
                        "always includes it)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="graph rows: capture each graph once per shape as a CUDA graph and time its replays, where "
                        "the runner allows it (torch, aoti, tensorrt; a CUDA --device)")
    p.add_argument("--sam-ensemble", action="store_true",
                   help="include the SAM-mask ensemble (a sam_masks stage: mask generation + classification per image)")
    p.add_argument("--out", metavar="DIR", help="write bench.json, bench.csv, bench.md and the PNG plots here (a "
                                                "matrix: matrix.json, matrix.csv, matrix.md, matrix.png)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="print B/A ratios of two reports (and plot them with --out); runs nothing")
    add_inputs(p)
    p.set_defaults(func=main)


def add_inputs(p) -> None:
    """The image and vocabulary a bench run feeds the pipeline."""
    p.add_argument("--image", help="image file (default: the bundled assets/sample.png)")
    common.add_vocabulary(p, train=False, default=" (default: the sample image's classes)")
    common.add_sizes(p)
    common.add_device(p)
    p.add_argument("--json", metavar="FILE", help="also write the report to this JSON file")


def inputs(args, predictor):
    """(image, vocabulary, options) of ``add_inputs``' flags, with the predictor's defaults."""
    from cmpf.predictor import options_with

    image, vocabulary, overrides = request(args)
    return image, vocabulary, options_with(predictor.options, **overrides)


def request(args):
    """(image, vocabulary, inference-option overrides) of ``add_inputs``' flags."""
    from cmpf.sample import SAMPLE_CLASSES, SAMPLE_IMAGE
    from cmpf.preprocess import load_image
    from cmpf.vocabulary import load_vocabulary

    classes = args.classes if args.vocab or args.classes else SAMPLE_CLASSES
    overrides = dict(min_size=args.min_size, max_size=args.max_size, resize=args.resize,
                     sam_ensemble=getattr(args, "sam_ensemble", False) or None)
    return load_image(args.image or SAMPLE_IMAGE), load_vocabulary(args.vocab, classes, args.things), overrides


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in common.csv(text) or ())
    except ValueError:
        raise InputError(f"{flag} {text!r}: give comma-separated integers, e.g. {flag} 1,2,4") from None


def _shapes(text) -> tuple:
    if not text:
        return (None,)
    try:
        return tuple(tuple(int(v) for v in s.lower().split("x")) for s in common.csv(text))
    except ValueError:
        raise InputError(f"--shapes {text!r}: give HxW sizes, e.g. --shapes 320x416,480x640") from None


def main(args) -> int:
    from cmpf.bench.bench_report import compare, read_bench
    from cmpf.bench.plots import plot_comparison

    if args.compare:
        a, b = (read_bench(f) for f in args.compare)
        print(compare(a, b))
        if args.out:
            print(f"wrote {plot_comparison([a, b], f'{args.out}/compare.png')}")
        return 0
    match common.family(args.model, args.artifacts):
        case "fusioner":
            return _bench_fusioner(args)
    from cmpf.bench.bench_run import BenchConfig
    from cmpf.bench.matrix import combinations, parse_backends, parse_precisions

    cfg = BenchConfig(_ints(args.batch, "--batch"), _shapes(args.shapes), args.warmup, args.iters, args.device,
                      args.cuda_events, args.host_transfer == "include", args.cuda_graph)
    source = common.source(argparse.Namespace(**{**vars(args), "precision": None}), default_model="tiny")
    combos = combinations(parse_backends(args.backend, source.default_backend), parse_precisions(args.precision),
                          source)
    written = _single(args, cfg, source, combos[0]) if len(combos) == 1 else _matrix(args, cfg, source, combos)
    for path in written:
        print(f"wrote {path}")
    return 0


def _single(args, cfg, source, combo) -> list:
    """One backend at one precision: ``bench.*`` (``cmpf.bench/1``)."""
    import dataclasses

    from cmpf.bench.bench_report import to_markdown, write_bench
    from cmpf.bench.bench_run import run_bench
    from cmpf.bench.plots import plot_report
    from cmpf.io import write_json
    from cmpf.predictor import load_predictor

    source = dataclasses.replace(source, precision=combo.precision)
    predictor = load_predictor(source, combo.backend, args.device)
    image, vocabulary, options = inputs(args, predictor)
    predictor.options = options
    report = run_bench(predictor, image, vocabulary, cfg, source).to_json()
    print(to_markdown(report))
    written = write_bench(report, args.out) + plot_report(report, args.out) if args.out else []
    return written + ([write_json(args.json, report)] if args.json else [])


def _matrix(args, cfg, source, combos) -> list:
    """Every backend × precision: ``matrix.*`` (``cmpf.bench-matrix/1``), ratios to the first that ran."""
    from cmpf.bench.matrix import matrix_csv, matrix_markdown, run_matrix
    from cmpf.bench.plots import plot_comparison
    from cmpf.io import write_json, write_text

    image, vocabulary, overrides = request(args)
    matrix = run_matrix(source, combos, image, vocabulary, cfg, overrides)
    markdown = matrix_markdown(matrix)
    print(markdown)
    written = []
    if args.out:
        written = [write_json(f"{args.out}/matrix.json", matrix), write_text(f"{args.out}/matrix.csv",
                                                                             matrix_csv(matrix)),
                   write_text(f"{args.out}/matrix.md", markdown), plot_comparison(matrix["runs"],
                                                                                  f"{args.out}/matrix.png")]
    return written + ([write_json(args.json, matrix)] if args.json else [])


def _bench_fusioner(args) -> int:
    """``cmpf bench --model tiny-fusioner | --artifacts FUSIONER_DIR [--backend B] [--image IMG] [--classes L]``."""
    from pathlib import Path

    import numpy as np

    from cmpf.bench.environment import environment
    from cmpf.fusioner.bench import bench_fusioner, to_markdown
    from cmpf.fusioner.run import FusionerSource, check_image_size, class_names, load_graphs, read_image
    from cmpf.io import write_json
    from cmpf.sample import SAMPLE_IMAGE

    cmpf_only = [flag for flag, given in (("--batch", args.batch != "1"), ("--shapes", args.shapes),
                                          ("--cuda-graph", args.cuda_graph), ("--sam-ensemble", args.sam_ensemble),
                                          ("--out", args.out), ("--things", args.things),
                                          ("--backend A,B", "," in (args.backend or ""))) if given]
    if cmpf_only:
        raise InputError(f"{', '.join(cmpf_only)}: not for a Fusioner model; give --model/--artifacts, one --backend, "
                         f"--image, --classes, --warmup, --iters, --device, --json")
    source = FusionerSource(model=args.model, checkpoint=args.checkpoint, clip_weights=args.clip_weights,
                            artifacts=args.artifacts, backend=args.backend, precision=args.precision, device=args.device)
    image_path = Path(args.image or SAMPLE_IMAGE)
    manifest = source.manifest()
    check_image_size(image_path, 224 if manifest is None else manifest.model.window_size)
    default = None if args.vocab or (manifest and manifest.vocabulary) else "cat;dog"  # the export's, else these
    names = class_names(args.vocab, args.classes or default, manifest)
    graphs, _, backend = load_graphs(source, manifest)
    rows = bench_fusioner(graphs, np.asarray(read_image(image_path)), list(names), args.warmup, args.iters)
    print(to_markdown(rows))
    if args.json:
        report = {"benchmark": "fusioner", "backend": str(backend), "image": str(image_path), "classes": list(names),
                  "rows": rows, "environment": environment(args.device)}
        print(f"wrote {write_json(args.json, report)}")
    return 0
