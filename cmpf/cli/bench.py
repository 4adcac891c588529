"""``cmpf bench``: per-stage latency (median / p90 after warm-up) of one backend."""

from __future__ import annotations

from cmpf.cli import common


def add(sub) -> None:
    p = sub.add_parser("bench", help="per-stage latency (median / p90 after warm-up) of one backend")
    common.add_source(p)
    common.add_backend(p)
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    p.add_argument("--iters", type=int, default=10, help="timed calls (default: 10)")
    add_inputs(p)
    p.set_defaults(func=main)


def add_inputs(p) -> None:
    """The image and vocabulary a bench or parity run feeds the pipeline."""
    p.add_argument("--image", help="image file (default: the bundled assets/sample.png)")
    common.add_vocabulary(p, train=False, default=" (default: the demo's classes)")
    common.add_sizes(p)
    common.add_device(p)
    p.add_argument("--json", metavar="FILE", help="also write the rows to this JSON file")


def inputs(args, predictor):
    """(image, vocabulary, options) of ``add_inputs``' flags, with the predictor's defaults."""
    from cmpf.demo import DEMO_CLASSES, SAMPLE_IMAGE
    from cmpf.predictor import options_with
    from cmpf.preprocess import load_image
    from cmpf.vocabulary import load_vocabulary

    classes = args.classes if args.vocab or args.classes else DEMO_CLASSES
    vocabulary = load_vocabulary(args.vocab, classes, args.things)
    options = options_with(predictor.options, min_size=args.min_size, max_size=args.max_size, resize=args.resize)
    return load_image(args.image or SAMPLE_IMAGE), vocabulary, options


def main(args) -> int:
    from cmpf.bench.parity import format_table
    from cmpf.bench.stages import benchmark_pipeline
    from cmpf.predictor import load_predictor

    predictor = load_predictor(common.source(args, default_model="tiny"), args.backend, args.device)
    image, vocabulary, options = inputs(args, predictor)
    rows = benchmark_pipeline(predictor.runners, predictor.cfg, image, vocabulary, warmup=args.warmup,
                              iters=args.iters, options=options, device=args.device)
    print(format_table(["stage", "backend", "median ms", "p90 ms"],
                       [[r.stage, r.backend, f"{r.timing.median_ms:.2f}", f"{r.timing.p90_ms:.2f}"] for r in rows]))
    if args.json:
        from cmpf.io import write_json

        print(f"wrote {write_json(args.json, {'model': predictor.cfg.name, 'stages': [r.to_json() for r in rows]})}")
    return 0
