"""``cmpf run DIR|GLOB|FILE... (--model PRESET [--checkpoint CKPT] | --artifacts DIR) [--vocab FILE | --classes L]``."""

from __future__ import annotations

from cmpf.cli import common


def add(sub) -> None:
    p = sub.add_parser("run", help="segment images with a checkpoint or exported artifacts",
                       description="Segment images and write label, colour, overlay and COCO panoptic / instance "
                                   "files into --out (semantic/, color/, overlay/, panoptic/, panoptic.json, "
                                   "instances.json).")
    p.add_argument("images", nargs="+", metavar="DIR|GLOB|FILE",
                   help="image files, folders of images (not recursive; hidden files left out) or quoted glob "
                        "patterns ('data/**/*.jpg'); a file in a folder or pattern that is not an image is skipped "
                        "and reported, and the run then exits 2")
    common.add_source(p)
    common.add_backend(p)
    common.add_vocabulary(p, default=" (default with --artifacts: the vocabulary recorded at export)")
    p.add_argument("--coco-json", metavar="FILE",
                   help="COCO annotation file of these images (panoptic or instances): the files get its image ids "
                        "(matched by file name) and, without --vocab/--classes, its categories as the vocabulary "
                        "and category ids (default: ids from --vocab's 'id:' lines, else 1..K; image ids = the "
                        "file names, as numbers when all are)")
    p.add_argument("--no-resize", dest="resize", action="store_false", default=None,
                   help="skip the official 800/1333 shortest-edge resize (default: resize)")
    p.add_argument("--batch", type=common.positive_int, default=1, metavar="N",
                   help="images per pipeline call (default: 1)")
    p.add_argument("--sam-ensemble", action="store_true",
                   help="OpenSeg SAM-mask ensemble of the semantic output (masks made online from the SAM "
                        "embedding the pipeline computes; the automatic-mask settings are the manifest's / "
                        "segment-anything's defaults; default: off)")
    p.add_argument("--sam-masks", metavar="PATH",
                   help="precomputed SAM masks instead (implies --sam-ensemble): the official per-image .pkl "
                        "records or an .npz with masks (N,H,W); a file for one image, or a folder of <stem>.pkl|.npz")
    p.add_argument("--out", default="out", help="output directory (default: out)")
    p.add_argument("--dump-tensors", metavar="FILE.npz", help="write the first image's tensors to this .npz "
                                                              "(default: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    p.add_argument("--mode", choices=("per-class", "joint"),
                   help="Fusioner only: one fusion pass per class (per-class, the official evaluation) or all classes "
                        "in one pass (joint) (default: the export's, else per-class)")
    common.add_max_pixels(p)
    common.add_device(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from cmpf.errors import InputError

    match common.family(args.model, args.artifacts):
        case "fusioner":
            return _run_fusioner(args)
    if args.mode:
        raise InputError("--mode applies to Fusioner models (tiny-fusioner, fusioner-vitl14) only; drop it")
    from cmpf.run import RunConfig, run

    cfg = RunConfig(inputs=tuple(args.images), out_dir=args.out, source=common.source(args), backend=args.backend,
                    vocab=args.vocab, classes=args.classes, things=args.things, train_vocab=args.train_vocab,
                    coco_json=args.coco_json, resize=args.resize,
                    sam_ensemble=args.sam_ensemble or bool(args.sam_masks), sam_masks=args.sam_masks,
                    dump_tensors=args.dump_tensors, device=args.device, batch=args.batch, progress=not args.no_progress,
                    **({"max_pixels": args.max_pixels} if args.max_pixels else {}))  # default: RunConfig's
    result = run(cfg)
    print(result.summary())
    if result.skipped:  # the results of the images are written; the exit code says that some files were not
        listing = "\n".join(f"skipped {path}: {why}" for path, why in result.skipped)
        raise InputError(f"{len(result.skipped)} of {len(result.skipped) + result.images} files are not images and "
                         f"were skipped (listed above); the results of the other {result.images} are in {args.out}; "
                         f"remove those files or name the images", details=listing)
    return 0


def _run_fusioner(args) -> int:
    from cmpf.errors import InputError
    from cmpf.fusioner.run import FusionerRunConfig, FusionerSource, run_fusioner

    cmpf_only = [flag for flag, given in (("--coco-json", args.coco_json), ("--no-resize", args.resize is False),
                                          ("--batch", args.batch != 1), ("--sam-ensemble", args.sam_ensemble),
                                          ("--sam-masks", args.sam_masks), ("--sam-weights", args.sam_weights),
                                          ("--things", args.things), ("--train-vocab", args.train_vocab),
                                          ("--max-pixels", args.max_pixels)) if given]
    if cmpf_only:
        raise InputError(f"{', '.join(cmpf_only)}: CMPF / FC-CLIP options; a Fusioner run takes --classes / --vocab, "
                         f"--mode, --backend, --precision, --dump-tensors; drop them")
    source = FusionerSource(model=args.model, checkpoint=args.checkpoint, clip_weights=args.clip_weights,
                            artifacts=args.artifacts, backend=args.backend, precision=args.precision, device=args.device)
    cfg = FusionerRunConfig(images=tuple(args.images), out_dir=args.out, source=source, vocab=args.vocab,
                            classes=args.classes, mode=args.mode, dump_tensors=args.dump_tensors)
    print(run_fusioner(cfg, progress=not args.no_progress).summary())
    return 0
