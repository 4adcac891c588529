"""``cmpf export --model PRESET [--checkpoint CKPT [--clip-weights CLIP]] --out DIR [--format onnx,aoti]``."""

from __future__ import annotations

from cmpf.cli import common


def add(sub) -> None:
    p = sub.add_parser("export", help="export graphs to ONNX / AOTInductor with a manifest")
    p.add_argument("--model", "--preset", dest="model", required=True, metavar="PRESET", help="preset name, e.g. tiny")
    p.add_argument("--checkpoint", help="weights (.pth); without it: random weights, saved beside the graphs")
    p.add_argument("--clip-weights", metavar="FILE",
                   help="Fusioner: OpenAI / open_clip CLIP weights for the frozen towers, when the checkpoint lacks them")
    p.add_argument("--out", required=True, help="artifact directory")
    p.add_argument("--format", default="onnx", help="comma list of onnx, aoti (default: onnx)")
    p.add_argument("--graphs", help="comma list of graphs (default: all)")
    p.add_argument("--opset", type=int, help="ONNX opset (>= 18; default 20)")
    p.add_argument("--external-data", action="store_true",
                   help="ONNX weights in a separate <graph>.fp32.onnx.data file (automatic above 2 GB)")
    common.add_device(p)
    common.add_vocabulary(p, default=", recorded in the manifest as `cmpf run`'s default")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check of each file")
    p.add_argument("--plugins", help="write these kernels as TensorRT plugin nodes (cmpf domain, AOT) instead of their "
                                     "decompositions: masked_attention, mask_pooling, ms_deform_attn (for `cmpf build "
                                     "--plugins`; ONNX Runtime cannot run those graphs)")
    p.set_defaults(func=main)


def main(args) -> int:
    from cmpf.export.api import ExportConfig, export_model

    from cmpf.errors import InputError

    formats = common.csv(args.format) or ()
    family = common.family(args.model)
    if args.clip_weights and family != "fusioner":
        raise InputError(f"--clip-weights applies to Fusioner presets; {args.model} reads CLIP from its checkpoint "
                         f"(drop --clip-weights)")
    if "triton-repo" in formats:  # the repository is made from an export's files, by its own command
        raise InputError(f"--format triton-repo: a Triton model repository is written from an export; run "
                         f"`cmpf export --model {args.model} --out DIR` and then `cmpf triton-repo --artifacts DIR "
                         f"--out {args.out}`")
    onnx_only = [flag for flag, given in (("--opset", args.opset is not None), ("--external-data", args.external_data),
                                          ("--no-verify", args.no_verify)) if given]
    if onnx_only and "onnx" not in formats:  # refused, not silently ignored
        raise InputError(f"{', '.join(onnx_only)} only apply to --format onnx (this export: {args.format}); drop "
                         f"them or add onnx to --format")
    opset = {"opset": args.opset} if args.opset is not None else {}  # default: ExportConfig's
    cfg = ExportConfig(model=args.model, out_dir=args.out, checkpoint=args.checkpoint,
                       formats=formats, graphs=common.csv(args.graphs), device=args.device,
                       vocab=args.vocab, classes=args.classes, things=args.things, train_vocab=args.train_vocab,
                       verify=not args.no_verify, external_data=args.external_data,
                       plugins=common.csv(args.plugins) or (), **opset)
    match family:
        case "fusioner":
            from cmpf.fusioner.export import export_fusioner

            path = export_fusioner(cfg, clip_weights=args.clip_weights)
        case _:
            path = export_model(cfg)
    print(f"wrote {path}")
    return 0
