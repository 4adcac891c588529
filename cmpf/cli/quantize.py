"""``cmpf quantize --artifacts DIR --precision fp16|int8|GRAPH=P,... [--calib-images DIR]``."""

from __future__ import annotations

from cmpf.cli import common


def add(sub) -> None:
    p = sub.add_parser("quantize", help="write fp16 / bf16 / int8 ONNX graphs beside an export's fp32 files",
                       description="Reduced precision written into the graph, as TensorRT 11 builds it: fp16 and bf16 "
                                   "by casts (norms, softmax and the reductions stay fp32), int8 by symmetric Q/DQ "
                                   "calibrated on images run through the fp32 pipeline. Adds <graph>.<precision>.onnx "
                                   "files and records them in manifest.json; run them with `cmpf run --artifacts DIR "
                                   "--precision P` (bf16 files: --backend openvino, or `cmpf build` for TensorRT).")
    p.add_argument("--artifacts", required=True, metavar="DIR", help="directory written by `cmpf export`")
    p.add_argument("--precision", required=True, metavar="P",
                   help="fp16, bf16 or int8 for every graph, or GRAPH=P pairs: 'sam_image_encoder=int8,decoder=fp16' "
                        "(graphs not named stay fp32)")
    p.add_argument("--calib-images", metavar="DIR", help="calibration images (int8; a few dozen like the ones "
                                                         "you will segment)")
    p.add_argument("--calib-limit", type=common.positive_int, metavar="N", help="use the first N images (sorted)")
    p.add_argument("--calib-method", default=None, choices=("minmax", "entropy", "percentile"),
                   help="activation range estimate (default: minmax, measured best)")
    p.add_argument("--exclude", metavar="NODES", help="comma list of node names kept out of Q/DQ (int8) or "
                                                      "kept fp32 (fp16)")
    p.add_argument("--quantize-heads", action="store_true",
                   help="also quantise the output heads (the last weight op before each graph output)")
    p.add_argument("--reduce-range", action="store_true",
                   help="int8 weights in 7 bits: on x86 CPUs without VNNI (`cmpf doctor`: cpu int8) ONNX Runtime's "
                        "int8 products can saturate with 8-bit ones; one bit less weight precision elsewhere")
    common.add_vocabulary(p, train=False, default=" (calibration vocabulary; default: the export's)")
    p.set_defaults(func=main)


def main(args) -> int:
    from cmpf.precision.api import QuantizeConfig, quantize_artifacts
    from cmpf.vocabulary import load_vocabulary

    vocabulary = load_vocabulary(args.vocab, args.classes, args.things, required=False)
    method = {"method": args.calib_method} if args.calib_method else {}
    cfg = QuantizeConfig(args.artifacts, args.precision, calib_images=args.calib_images, calib_limit=args.calib_limit,
                         exclude=common.csv(args.exclude) or (), quantize_heads=args.quantize_heads,
                         reduce_range=args.reduce_range, vocabulary=vocabulary, **method)
    print(f"wrote {quantize_artifacts(cfg)}")
    return 0
