"""Which calibration method: per-graph int8 error of each method on an artifact directory.

    python benchmarks/precision_calibration.py /tmp/cmpf-exports/tiny-onnx-all

Quantises every graph but the SAM mask decoder with MinMax, Percentile (99.99) and Entropy on 8
crops/flips of the bundled sample image, then compares each int8 graph with its fp32 file on the
inputs the pipeline gives it for a 256x320 image (no resize, no padding). Writes
``results/precision_calibration_<model>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import torch

from cmpf.bench.environment import environment
from cmpf.bench.parity import capture_graph_inputs, graph_parity
from cmpf.io import write_json
from cmpf.precision.api import QuantizeConfig, quantize_artifacts
from cmpf.predictor import ModelSource, load_predictor
from cmpf.preprocess import load_image
from cmpf.sample import SAMPLE_IMAGE
from cmpf.vocabulary import parse_class_list
from cpu_precision import calibration_images  # a sibling script of this directory

RESULTS = Path(__file__).parent / "results"
METHODS = ("minmax", "percentile", "entropy")
GRAPHS = ("text_encoder", "clip_image_encoder", "sam_image_encoder", "decoder", "mask_classifier")
CLASSES = "cat;dog,puppy;sky,heaven;grass"


def measure(artifacts: str, method: str, calib: Path, image: torch.Tensor, tmp: Path) -> tuple[dict, str]:
    """{graph.output: L2-relative error} of the int8 files made with ``method``, and the model's name."""
    vocabulary = parse_class_list(CLASSES)
    directory = Path(shutil.copytree(artifacts, tmp / method))
    plan = ",".join(f"{g}=int8" for g in GRAPHS)
    quantize_artifacts(QuantizeConfig(str(directory), plan, calib_images=str(calib), method=method,
                                      vocabulary=vocabulary), progress=False)
    fp32 = load_predictor(ModelSource(artifacts=str(directory)), "onnxruntime")
    low = load_predictor(ModelSource(artifacts=str(directory), precision="int8"), "onnxruntime")
    options = dataclasses.replace(fp32.options, resize=False)
    inputs = capture_graph_inputs(fp32.runners, [image], vocabulary, fp32.cfg, options)
    rows = graph_parity(fp32.runners, {g: low.runners[g] for g in inputs}, inputs, "int8")
    return {f"{r.graph}.{r.output}": round(r.rel_error, 4) for r in rows}, fp32.cfg.name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("artifacts", help="an fp32 artifact directory (cmpf export)")
    args = p.parse_args()
    image = torch.nn.functional.interpolate(load_image(SAMPLE_IMAGE)[None].float(), size=(256, 320))[0].byte()
    errors, model = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        calib = calibration_images(Path(str(SAMPLE_IMAGE)), 8, Path(tmp) / "calib")
        for method in METHODS:
            start = time.perf_counter()
            errors[method], model = measure(args.artifacts, method, calib, image, Path(tmp))
            print(method, f"{time.perf_counter() - start:.0f}s", errors[method], flush=True)
    write_json(RESULTS / f"precision_calibration_{model}.json",
               {"schema": "cmpf.precision_calibration/1", "model": model, "calibration_images": 8,
                "rel_error": errors, "worst": {m: max(v.values()) for m, v in errors.items()},
                "machine": environment()})


if __name__ == "__main__":
    main()
