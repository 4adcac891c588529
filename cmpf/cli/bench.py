"""``cmpf bench``: per-stage latency percentiles, images/s and memory of one backend; ``--compare A.json B.json``."""

from __future__ import annotations

from cmpf.cli import common
from cmpf.errors import InputError


def add(sub) -> None:
    p = sub.add_parser("bench", help="per-stage latency (p50/p90/p95/p99, mean, std, min), images/s and peak memory "
                                     "of one backend; --compare A.json B.json prints ratios")
    common.add_source(p)
    common.add_backend(p)
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    p.add_argument("--iters", type=int, default=10, help="timed calls (default: 10)")
    p.add_argument("--batch", default="1", help="batch sizes to sweep, e.g. 1,2,4 (default: 1)")
    p.add_argument("--shapes", help="image sizes HxW fed to the graphs without the official resize, e.g. "
                                    "320x416,480x640 (default: the image through the official resize)")
    p.add_argument("--cuda-events", action="store_true", help="time with CUDA events (a CUDA --device)")
    p.add_argument("--sam-ensemble", action="store_true",
                   help="include the SAM-mask ensemble (a sam_masks stage: mask generation + classification per image)")
    p.add_argument("--out", metavar="DIR", help="write bench.json, bench.csv, bench.md and the PNG plots here")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="print B/A ratios of two reports (and plot them with --out); runs nothing")
    add_inputs(p)
    p.set_defaults(func=main)


def add_inputs(p) -> None:
    """The image and vocabulary a bench run feeds the pipeline."""
    p.add_argument("--image", help="image file (default: the bundled assets/sample.png)")
    common.add_vocabulary(p, train=False, default=" (default: the demo's classes)")
    common.add_sizes(p)
    common.add_device(p)
    p.add_argument("--json", metavar="FILE", help="also write the report to this JSON file")


def inputs(args, predictor):
    """(image, vocabulary, options) of ``add_inputs``' flags, with the predictor's defaults."""
    from cmpf.demo import DEMO_CLASSES, SAMPLE_IMAGE
    from cmpf.predictor import options_with
    from cmpf.preprocess import load_image
    from cmpf.vocabulary import load_vocabulary

    classes = args.classes if args.vocab or args.classes else DEMO_CLASSES
    vocabulary = load_vocabulary(args.vocab, classes, args.things)
    options = options_with(predictor.options, min_size=args.min_size, max_size=args.max_size, resize=args.resize,
                           sam_ensemble=getattr(args, "sam_ensemble", False) or None)
    return load_image(args.image or SAMPLE_IMAGE), vocabulary, options


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
    from cmpf.bench.bench_report import compare, read_bench, to_markdown, write_bench
    from cmpf.bench.plots import plot_comparison, plot_report

    if args.compare:
        a, b = (read_bench(f) for f in args.compare)
        print(compare(a, b))
        if args.out:
            print(f"wrote {plot_comparison([a, b], f'{args.out}/compare.png')}")
        return 0
    from cmpf.bench.bench_run import BenchConfig, run_bench
    from cmpf.io import write_json
    from cmpf.predictor import load_predictor

    cfg = BenchConfig(_ints(args.batch, "--batch"), _shapes(args.shapes), args.warmup, args.iters, args.device,
                      args.cuda_events)
    predictor = load_predictor(common.source(args, default_model="tiny"), args.backend, args.device)
    image, vocabulary, options = inputs(args, predictor)
    predictor.options = options
    report = run_bench(predictor, image, vocabulary, cfg).to_json()
    print(to_markdown(report))
    written = write_bench(report, args.out) + plot_report(report, args.out) if args.out else []
    if args.json:
        written.append(write_json(args.json, report))
    for path in written:
        print(f"wrote {path}")
    return 0
