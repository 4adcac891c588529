"""Subcommands ``cmpf export``, ``cmpf demo``, ``cmpf bench`` and ``cmpf parity``.

Each one: parse → config dataclass → library call (``cmpf.export.api``, ``cmpf.demo``,
``cmpf.bench``) → print. ``cmpf.cli`` registers them through ``add_commands``.
"""

from __future__ import annotations


def _csv(text: str | None) -> tuple[str, ...] | None:
    return tuple(s.strip() for s in text.split(",") if s.strip()) if text else None


def _cmd_export(args) -> int:
    from cmpf.export.api import ExportConfig, export_model

    opset = {"opset": args.opset} if args.opset else {}  # default: ExportConfig's
    cfg = ExportConfig(model=args.model, out_dir=args.out, checkpoint=args.checkpoint, formats=_csv(args.format),
                       graphs=_csv(args.graphs), device=args.device, vocab=args.vocab, classes=args.classes,
                       train_vocab=args.train_vocab, verify=not args.no_verify,
                       external_data=args.external_data, **opset)
    manifest = export_model(cfg)
    print(f"wrote {manifest}")
    return 0


def _cmd_demo(args) -> int:
    from cmpf.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out_dir=args.out, aoti=args.aoti, artifacts=args.artifacts, iters=args.iters))
    if result.ok:
        return 0
    # The strict per-graph gate is `cmpf parity`. The demo fails only when the deployed pipeline
    # disagrees end to end or an error is far (10x) past the fp32 target; it always names the misses.
    misses = sorted({f"{r.graph}.{r.output} ({r.rel_error:.1e} > {r.tolerance:.0e})" for r in result.rows if not r.ok})
    print("warning: above the fp32 parity target: " + ", ".join(misses))
    far = any(not (r.rel_error <= 10 * r.tolerance) for r in result.rows)
    if far or result.semantic_agreement < 0.99:
        print("error: the exported pipeline does not reproduce the eager model")
        return 1
    return 0


def _load_runners(args):
    """(runners, model config) from --artifacts DIR --backend B, or eager from --model/--checkpoint."""
    backend = args.backend or ("onnxruntime" if args.artifacts else "torch")
    if args.artifacts:
        from cmpf.runtime import load_artifacts

        return load_artifacts(args.artifacts, backend, args.device)
    if backend != "torch":
        raise ValueError("--model runs the eager model (--backend torch); give --artifacts DIR for other backends")
    from cmpf.model import build_model
    from cmpf.runtime.torch_runner import torch_runners

    model = build_model(args.model, args.checkpoint).to(args.device)
    return torch_runners(model), model.cfg


def _image_and_vocab(args):
    from cmpf.demo import DEMO_CLASSES, SAMPLE_IMAGE
    from cmpf.preprocess import load_image
    from cmpf.vocabulary import load_vocabulary_file, parse_class_list

    vocab = load_vocabulary_file(args.vocab) if args.vocab else parse_class_list(args.classes or DEMO_CLASSES)
    return load_image(args.image or SAMPLE_IMAGE), vocab


def _options(args):
    from cmpf.pipeline import PipelineOptions

    return PipelineOptions(min_size=args.min_size, max_size=args.max_size)


def _cmd_bench(args) -> int:
    from cmpf.bench.parity import format_table
    from cmpf.bench.stages import benchmark_pipeline

    runners, cfg = _load_runners(args)
    image, vocab = _image_and_vocab(args)
    rows = benchmark_pipeline(runners, cfg, image, vocab, warmup=args.warmup, iters=args.iters,
                              options=_options(args), device=args.device)
    print(format_table(["stage", "backend", "median ms", "p90 ms"],
                       [[r.stage, r.backend, f"{r.timing.median_ms:.2f}", f"{r.timing.p90_ms:.2f}"] for r in rows]))
    if args.json:
        from cmpf.outputs import write_json

        write_json(args.json, {"model": cfg.name, "stages": [r.to_json() for r in rows]})
    return 0


def _cmd_parity(args) -> int:
    from cmpf.bench.parity import capture_graph_inputs, format_table, graph_parity
    from cmpf.runtime import load_artifacts

    reference, cfg = load_artifacts(args.artifacts, "torch", args.device)
    candidate, _ = load_artifacts(args.artifacts, args.backend, args.device)
    image, vocab = _image_and_vocab(args)
    inputs = capture_graph_inputs(reference, [image], vocab, cfg, _options(args), device=args.device)
    rows = graph_parity(reference, candidate, inputs)
    print(format_table(["graph", "output", "backend", "rel. error", "tolerance", "mask IoU", "ok"],
                       [[r.graph, r.output, r.backend, r.rel_error, r.tolerance,
                         "-" if r.mask_iou is None else f"{r.mask_iou:.4f}", "yes" if r.ok else "NO"] for r in rows]))
    if args.json:
        from cmpf.outputs import write_json

        write_json(args.json, [r.to_json() for r in rows])
    failed = [f"{r.graph}.{r.output}" for r in rows if not r.ok]
    if failed:
        print(f"out of tolerance: {', '.join(failed)}")
    return 1 if failed else 0


def _add_inputs(p) -> None:
    p.add_argument("--image", help="image file (default: the bundled assets/sample.png)")
    p.add_argument("--classes", help="inline vocabulary 'cat;dog,puppy' (default: the demo's classes)")
    p.add_argument("--vocab", help="vocabulary file")
    p.add_argument("--min-size", type=int, help="short side of the resized image (default: the model's, 800)")
    p.add_argument("--max-size", type=int, help="long side limit of the resized image (default: the model's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the rows to this JSON file")


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="export graphs to ONNX / AOTInductor with a manifest")
    p.add_argument("--model", "--preset", dest="model", required=True, help="preset name, e.g. tiny")
    p.add_argument("--checkpoint", help="weights (.pth); without it: random weights, saved beside the graphs")
    p.add_argument("--out", required=True, help="artifact directory")
    p.add_argument("--format", default="onnx", help="comma list of onnx, aoti (default: onnx)")
    p.add_argument("--graphs", help="comma list of graphs (default: all)")
    p.add_argument("--opset", type=int, help="ONNX opset (>= 18; default 20)")
    p.add_argument("--external-data", action="store_true",
                   help="ONNX weights in a separate <graph>.fp32.onnx.data file (automatic above 2 GB)")
    p.add_argument("--device", default="cpu", help="device to export / compile on (AOTInductor is device-specific)")
    p.add_argument("--vocab", help="vocabulary file to record in the manifest")
    p.add_argument("--classes", help="inline vocabulary to record in the manifest")
    p.add_argument("--train-vocab", help="training vocabulary (seen-class mask) to record in the manifest")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check of each file")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("demo", help="export the tiny preset, run it with ONNX Runtime, compare with eager")
    p.add_argument("--out", default="demo_out", help="output directory")
    p.add_argument("--aoti", action="store_true", help="also compile and compare AOTInductor packages")
    p.add_argument("--artifacts", help="reuse this tiny export instead of exporting")
    p.add_argument("--iters", type=int, default=5, help="timed calls per graph and backend")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="per-stage latency (median / p90 after warm-up) of one backend")
    p.add_argument("--artifacts", help="directory written by `cmpf export`")
    p.add_argument("--model", "--preset", dest="model", default="tiny", help="eager preset when no --artifacts")
    p.add_argument("--checkpoint", help="weights for --model")
    p.add_argument("--backend", default=None, choices=["onnxruntime", "aoti", "torch"],
                   help="default: onnxruntime with --artifacts, else torch")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    _add_inputs(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("parity", help="eager vs a backend per graph; exits 1 when out of tolerance")
    p.add_argument("--artifacts", required=True, help="directory written by `cmpf export`")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "aoti"])
    _add_inputs(p)
    p.set_defaults(func=_cmd_parity)
