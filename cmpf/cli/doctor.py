"""``cmpf doctor`` (alias ``check-env``): what this machine offers (torch/CUDA, ONNX Runtime, Triton, TensorRT)."""

from __future__ import annotations


def add(sub) -> None:
    p = sub.add_parser("doctor", aliases=["check-env"], help="print what this machine offers")
    p.set_defaults(func=main)


def main(args) -> int:
    from cmpf.doctor import print_report

    print_report()
    return 0
