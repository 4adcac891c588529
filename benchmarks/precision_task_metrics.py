"""What fp16, bf16 and int8 cost in task metrics, on a model that does something: ``results/precision_task_tiny.{json,md}``.

    python benchmarks/precision_task_metrics.py [--artifacts demo_out/artifacts --calib-images DIR]
        [--scenes 16] [--train-iters 200]

A random-weight model paints every pixel one class, so its PQ says nothing about a precision. This
script takes the model `make demo` fits (the ``tiny`` preset trained by ``cmpf.train`` on generated
scenes; fitted here in a temporary directory unless ``--artifacts`` names a demo's export), writes its
fp16, bf16 and int8 graphs with ``cmpf quantize`` (int8 calibrated on the training scenes, the default
minmax recipe), and compares fp16 and int8 on ONNX Runtime and bf16 and int8 on OpenVINO (ONNX
Runtime's CPU provider has no bf16 kernels; OpenVINO runs the int8 files' other ops in bf16 where the CPU
has bf16 kernels; bf16 is skipped, with the reason in the report, on a CPU whose OpenVINO offers no
BF16) with the fp32 export through
``cmpf parity`` at all three levels: tensors on the sample image, each held-out scene end to end,
and PQ / mIoU / AP on held-out scenes (another generator seed than the training scenes), against the
scenes' ground truth for both sides. The fp32 export itself is the reference: its gap to PyTorch is
what ``parity_tiny_synthetic`` records.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from cmpf.bench.environment import environment
from cmpf.bench.parity_run import ParityConfig, run_parity
from cmpf.demo import SCENE_SIZE, DemoConfig, run_demo
from cmpf.io import write_json, write_text
from cmpf.precision.api import QuantizeConfig, quantize_artifacts
from cmpf.sample import SAMPLE_IMAGE

RESULTS = Path(__file__).resolve().parent / "results"
SIDES = ("onnxruntime:fp16", "onnxruntime:int8", "openvino:bf16", "openvino:int8")
HELD_OUT_SEED = 1001  # the demo trains on seed 0 and scores on seed 1: a third set, seen by neither


def _fit(work: Path, train_iters: int) -> tuple[Path, Path]:
    """The demo's trained export and its training images (``cmpf demo`` in ``work``)."""
    run_demo(DemoConfig(out_dir=str(work), train_iters=train_iters, scenes=2, iters=1))
    return work / "artifacts", work / "data" / "coco" / "train2017"


def _sides() -> tuple[tuple[str, ...], dict[str, str]]:
    """The candidate sides this machine can run, and the reason for each one it cannot."""
    sides, skipped = [], {}
    for side in SIDES:
        backend, precision = side.split(":")
        if backend == "openvino":
            try:
                from cmpf.runtime.openvino_runner import has_bf16_kernels
            except ImportError:
                skipped[side] = "openvino is not installed"
                continue
            if precision == "bf16" and not has_bf16_kernels():
                skipped[side] = "OpenVINO has no bf16 kernels on this CPU (needs AVX-512 BF16 or AMX)"
                continue
        sides.append(f"trained:{side}")
    return tuple(sides), skipped


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, help="the ONNX export `cmpf demo` wrote (demo_out/artifacts)")
    p.add_argument("--calib-images", type=Path, help="its training images (demo_out/data/coco/train2017)")
    p.add_argument("--train-iters", type=int, default=200, help="training steps when fitting here")
    p.add_argument("--scenes", type=int, default=16, help="held-out scenes scored (level 3)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory of precision_task_tiny.{json,md}")
    args = p.parse_args()
    if bool(args.artifacts) != bool(args.calib_images):
        p.error("give --artifacts and --calib-images together (or neither: the model is fitted here)")
    logging.captureWarnings(True)
    out = args.out.resolve()
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="cmpf-precision-task-") as tmp:
        work = Path(tmp)
        if args.artifacts:
            source, calib = args.artifacts.resolve(), args.calib_images.resolve()
        else:
            source, calib = _fit(work / "demo", args.train_iters)
        shutil.copytree(source, work / "trained")  # quantize adds files to the directory: work on a copy
        os.chdir(work)  # the report names sides `trained:...`, never a machine-local path
        try:
            torch.manual_seed(0)
            quantize_artifacts(QuantizeConfig("trained", "fp16"))
            quantize_artifacts(QuantizeConfig("trained", "bf16"))
            quantize_artifacts(QuantizeConfig("trained", "int8", calib_images=str(calib)))
            sides, skipped = _sides()
            report = run_parity(ParityConfig(
                sides, "trained:onnxruntime",
                images=(str(SAMPLE_IMAGE),), resize=False, dataset="synthetic", synthetic_images=args.scenes,
                synthetic_size=SCENE_SIZE, synthetic_seed=HELD_OUT_SEED))
        finally:
            os.chdir(home)
    markdown = report.to_markdown() + "".join(f"\nskipped `trained:{s}`: {why}\n" for s, why in skipped.items())
    result = {"benchmark": "precision_task_metrics", "machine": environment(),
              "train_iters": None if args.artifacts else args.train_iters, "skipped": skipped,
              "report": report.to_json()}
    print(markdown)
    print(f"wrote {write_json(out / 'precision_task_tiny.json', result)}")
    print(f"wrote {write_text(out / 'precision_task_tiny.md', markdown + chr(10))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
