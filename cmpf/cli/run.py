"""``cmpf run IMAGE... (--model PRESET [--checkpoint CKPT] | --artifacts DIR) [--vocab FILE | --classes LIST]``."""

from __future__ import annotations

from cmpf.cli import common


def add(sub) -> None:
    p = sub.add_parser("run", help="segment images with a checkpoint or exported artifacts")
    p.add_argument("images", nargs="+", help="image files")
    common.add_source(p)
    common.add_backend(p)
    common.add_vocabulary(p, default=" (default with --artifacts: the vocabulary recorded at export)")
    p.add_argument("--no-resize", dest="resize", action="store_false", default=None,
                   help="skip the official 800/1333 shortest-edge resize")
    p.add_argument("--sam-ensemble", action="store_true",
                   help="OpenSeg SAM-mask ensemble of the semantic output (masks made online from the SAM "
                        "embedding the pipeline computes; the automatic-mask settings are the manifest's / "
                        "segment-anything's defaults)")
    p.add_argument("--sam-masks", metavar="PATH",
                   help="precomputed SAM masks instead (implies --sam-ensemble): the official per-image .pkl "
                        "records or an .npz with masks (N,H,W); a file for one image, or a folder of <stem>.pkl|.npz")
    p.add_argument("--out", default="out", help="output directory (default: out)")
    p.add_argument("--dump-tensors", metavar="FILE.npz", help="write the first image's tensors to this .npz")
    common.add_max_pixels(p)
    common.add_device(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from cmpf.run import RunConfig, run

    cfg = RunConfig(images=tuple(args.images), out_dir=args.out, source=common.source(args), backend=args.backend,
                    vocab=args.vocab, classes=args.classes, things=args.things, train_vocab=args.train_vocab,
                    resize=args.resize, sam_ensemble=args.sam_ensemble or bool(args.sam_masks),
                    sam_masks=args.sam_masks, dump_tensors=args.dump_tensors, device=args.device,
                    **({"max_pixels": args.max_pixels} if args.max_pixels else {}))  # default: RunConfig's
    written = run(cfg)
    print(f"wrote {len(written)} files under {args.out}")
    return 0
