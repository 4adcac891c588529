"""The committed three-level parity report of the tiny export: ``results/parity_tiny_synthetic.{json,md}``.

    python benchmarks/parity_tiny.py [--min-size 320 --max-size 416] [--synthetic-images 2] [--artifacts DIR]

Exports the random-weight ``tiny`` preset (seed 0) as ONNX into a temporary directory (or takes
``--artifacts``, such an export made before: minutes saved on 2 cores), then compares
it on ONNX Runtime with the eager model (rebuilt from the export's weights) at all three levels:
tensors on the sample image's graph inputs, the sample image and the synthetic images end to end,
and the synthetic COCO-panoptic set's PQ / mIoU / AP. The run happens from inside the temporary
directory so the report names the candidate ``tiny:onnxruntime``, never a machine-local path.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import torch

from cmpf.bench.parity_run import ParityConfig, run_parity
from cmpf.sample import SAMPLE_CLASSES, SAMPLE_IMAGE
from cmpf.export.api import ExportConfig, export_model
from cmpf.io import write_json, write_text
from cmpf.model import build_model
from cmpf.vocabulary import load_vocabulary

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min-size", type=int, default=320)
    p.add_argument("--max-size", type=int, default=416)
    p.add_argument("--synthetic-images", type=int, default=2)
    p.add_argument("--artifacts", type=Path, help="an ONNX export of the tiny preset (seed 0) to reuse")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory of parity_tiny_synthetic.{json,md}")
    args = p.parse_args()
    logging.captureWarnings(True)  # the random-weights warning of the export is expected here
    out, artifacts = args.out.resolve(), args.artifacts.resolve() if args.artifacts else None
    with tempfile.TemporaryDirectory(prefix="cmpf-parity-tiny-") as tmp:
        os.chdir(tmp)
        if artifacts:
            os.symlink(artifacts, "tiny", target_is_directory=True)
        else:
            torch.manual_seed(0)
            export_model(ExportConfig("tiny", "tiny", formats=("onnx",)), model=build_model("tiny"), progress=False)
        cfg = ParityConfig(("tiny:onnxruntime",), "torch", images=(str(SAMPLE_IMAGE),),
                           vocabulary=load_vocabulary(None, SAMPLE_CLASSES, None), min_size=args.min_size,
                           max_size=args.max_size, dataset="synthetic", synthetic_images=args.synthetic_images)
        report = run_parity(cfg)
    markdown = report.to_markdown()
    print(markdown)
    print(f"wrote {write_json(out / 'parity_tiny_synthetic.json', report.to_json())}")
    print(f"wrote {write_text(out / 'parity_tiny_synthetic.md', markdown + chr(10))}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
