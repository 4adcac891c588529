"""``cmpf doctor`` (alias ``check-env``): what this machine offers (torch/CUDA, ONNX Runtime, Triton, TensorRT).

``cmpf doctor --onnx FILE|DIR [--shapes ...]``: the TensorRT-readiness lint instead (CPU, no TensorRT
needed): one line per finding, exit 1 when any is an error.
"""

from __future__ import annotations


def add(sub) -> None:
    p = sub.add_parser("doctor", aliases=["check-env"], help="print what this machine offers, or lint ONNX files "
                                                            "for TensorRT (--onnx)")
    p.add_argument("--onnx", metavar="FILE|DIR", help="lint an ONNX file, or every ONNX file of an artifact directory, "
                                                     "against TensorRT 10.x / 11.x's documented ONNX support")
    p.add_argument("--shapes", action="append", metavar="RANGES",
                   help="with --onnx: the optimisation-profile ranges `cmpf build` would use, e.g. "
                        "'height=320:800:1344,batch=1:1:4' (repeat for several profiles)")
    p.set_defaults(func=main)


def main(args) -> int:
    if args.onnx is None:
        if args.shapes:
            from cmpf.errors import InputError

            raise InputError("--shapes only applies with --onnx FILE|DIR")
        from cmpf.doctor import print_report

        print_report()
        return 0
    from cmpf.engines.lint import lint_path
    from cmpf.engines.profiles import profiles_from
    from cmpf.errors import CheckFailed

    files, findings = lint_path(args.onnx, profiles=profiles_from(args.shapes))
    for finding in findings:
        print(finding)
    errors = sum(f.severity == "error" for f in findings)
    print(f"{len(files)} ONNX file(s), {errors} error(s), {len(findings) - errors} warning(s)")
    if errors:
        raise CheckFailed(f"{args.onnx}: {errors} TensorRT-readiness error(s) (listed above); fix them before "
                          f"`cmpf build`")
    return 0
