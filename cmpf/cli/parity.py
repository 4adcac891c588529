"""``cmpf parity --reference torch --candidate DIR:BACKEND [...]``: three-level parity, gated; exit 1 on a breach."""

from __future__ import annotations

import argparse

from cmpf.cli import common
from cmpf.errors import CheckFailed


def add(sub) -> None:
    p = sub.add_parser("parity", help="reference vs candidates at tensor, image and dataset level; exit 1 when a "
                                      "--fail-on rule (or a tolerance-table default) breaks")
    p.add_argument("--reference", default="torch", help="torch (the eager model) or DIR:BACKEND (default: torch)")
    p.add_argument("--candidate", action="append", default=[], metavar="DIR:BACKEND[:PRECISION]",
                   help="artifacts written by `cmpf export` and the backend to run them on, optionally at a precision "
                        "(int8; per graph: sam_image_encoder=int8+decoder=fp16); repeatable")
    common.add_source(p)
    p.add_argument("--backend", default=None,
                   help="with --artifacts DIR [--precision P]: shorthand for --candidate DIR:BACKEND[:P]")
    p.add_argument("--fail-on", metavar="RULES",
                   help="'rel>1e-4,cos<0.9999,pq_drop>0.1,miou_drop>0.5': rules that fail the run; each replaces the "
                        "tolerance table's default for its metric (metrics: rel abs cos iou sem pq inst pq_drop "
                        "miou_drop ap_drop)")
    p.add_argument("--image", action="append", default=[], help="image file, repeatable (default: the sample image)")
    common.add_vocabulary(p, train=False, default=" (default: the sample image's classes)")
    common.add_sizes(p)
    common.add_device(p)
    p.add_argument("--dataset", help="registry dataset for task metrics (level 3), or 'synthetic' (generated)")
    p.add_argument("--data-root", metavar="DIR", help="datasets root (default: $CMPF_DATASETS)")
    p.add_argument("--vocab-dir", metavar="DIR", help="directory of the official *_with_prompt_eng.txt files")
    p.add_argument("--limit", type=int, help="first N images of the dataset")
    p.add_argument("--synthetic-images", type=int, default=4, help="images of --dataset synthetic (default: 4)")
    p.add_argument("--synthetic-size", default="64", metavar="HxW",
                   help="image size of --dataset synthetic: HxW or one side (default: 64)")
    p.add_argument("--out", metavar="DIR", help="write parity.json, parity.md and failing graphs' inputs here")
    p.add_argument("--json", metavar="FILE", help="also write the JSON report to this file")
    p.set_defaults(func=main)


def main(args) -> int:
    match common.family(args.model, args.artifacts):
        case "fusioner":
            return _parity_fusioner(args)
    from cmpf.bench.parity_run import ParityConfig, run_parity
    from cmpf.sample import SAMPLE_CLASSES, SAMPLE_IMAGE
    from cmpf.io import write_json, write_text
    from cmpf.vocabulary import load_vocabulary

    candidates = list(args.candidate)
    if args.artifacts:  # --artifacts DIR [--backend B] [--precision P]: the candidate DIR:B[:P]
        precision = f":{args.precision.replace(',', '+')}" if args.precision else ""
        candidates.append(f"{args.artifacts}:{args.backend or 'onnxruntime'}{precision}")
    eager = common.source(argparse.Namespace(**{**vars(args), "precision": None})) if args.model else None
    classes = args.classes if args.vocab or args.classes else SAMPLE_CLASSES
    vocabulary = load_vocabulary(args.vocab, classes, args.things)
    cfg = ParityConfig(tuple(candidates), args.reference, eager, tuple(args.image) or (str(SAMPLE_IMAGE),), vocabulary,
                       args.min_size, args.max_size, args.resize, args.fail_on, args.dataset, args.data_root,
                       args.vocab_dir, args.limit, args.synthetic_images, _size(args.synthetic_size), out_dir=args.out,
                       device=args.device)
    report = run_parity(cfg)
    markdown = report.to_markdown()
    print(markdown)
    for path in ([f"{args.out}/parity.json"] if args.out else []) + ([args.json] if args.json else []):
        print(f"wrote {write_json(path, report.to_json())}")
    if args.out:
        print(f"wrote {write_text(f'{args.out}/parity.md', markdown + chr(10))}")
    if not report.ok:
        first, n = report.breaches[0], len(report.breaches)
        raise CheckFailed(f"parity gate failed: {first}" + (f" (and {n - 1} more breaches)" if n > 1 else ""))
    return 0


def _parity_fusioner(args) -> int:
    """``cmpf parity --artifacts FUSIONER_DIR [--backend onnxruntime,aoti] --image IMG [--classes 'cat;dog']``."""
    from cmpf.errors import InputError
    from cmpf.fusioner.parity import FusionerParityConfig, fusioner_parity, to_markdown
    from cmpf.io import write_json
    from cmpf.vocabulary import load_vocabulary

    cmpf_only = [flag for flag, given in (("--model", args.model), ("--candidate", args.candidate),
                                          ("--fail-on", args.fail_on), ("--dataset", args.dataset),
                                          ("--reference", args.reference != "torch"), ("--precision", args.precision),
                                          ("--out", args.out)) if given]
    if cmpf_only:
        raise InputError(f"{', '.join(cmpf_only)}: not for a Fusioner export; give --artifacts DIR, --backend B[,B], "
                         f"--image FILE, --classes, --device, --json FILE")
    cfg = FusionerParityConfig(args.artifacts, common.csv(args.backend) or ("onnxruntime",), tuple(args.image),
                               load_vocabulary(args.vocab, args.classes, None, required=False), device=args.device)
    report = fusioner_parity(cfg)
    print(to_markdown(report))
    if args.json:
        print(f"wrote {write_json(args.json, report)}")
    if not report["ok"]:
        first, n = report["breaches"][0], len(report["breaches"])
        raise CheckFailed(f"parity gate failed: {first}" + (f" (and {n - 1} more breaches)" if n > 1 else ""))
    return 0


def _size(text: str) -> int | tuple[int, int]:
    """``--synthetic-size``: ``256x320`` (H, W) or ``64`` (a square side)."""
    from cmpf.errors import InputError

    try:
        sides = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        sides = ()
    if len(sides) not in (1, 2) or min(sides) < 32:
        raise InputError(f"--synthetic-size {text!r}: give HxW or one side, each at least 32, e.g. 256x320")
    return sides[0] if len(sides) == 1 else sides

