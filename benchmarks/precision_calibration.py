"""Which calibration method: per-graph int8 error of each method on the tiny export.

    python benchmarks/precision_calibration.py /tmp/cmpf-exports/tiny-onnx-all

Quantises every graph but the SAM mask decoder with MinMax, Percentile (99.99) and Entropy on 8
crops/flips of the bundled sample image, then compares each int8 graph with its fp32 file on the
inputs the pipeline gives it for a 256x320 image (no resize, no padding). Writes
``results/precision_calibration_<model>.json``.
"""
import dataclasses, shutil, sys, tempfile, time, json
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, "benchmarks")
from cpu_precision import calibration_images
from cmpf.precision.api import QuantizeConfig, quantize_artifacts, SAMPLE_IMAGE
from cmpf.bench.parity import capture_graph_inputs, graph_parity
from cmpf.predictor import ModelSource, load_predictor
from cmpf.preprocess import load_image
from cmpf.vocabulary import parse_class_list
voc = parse_class_list("cat;dog,puppy;sky,heaven;grass")
tmp = Path(tempfile.mkdtemp())
calib = calibration_images(SAMPLE_IMAGE, 8, tmp / "calib")
image = torch.nn.functional.interpolate(load_image(SAMPLE_IMAGE)[None].float(), size=(256, 320))[0].byte()
res = {}
for method in ("minmax", "percentile", "entropy"):
    d = Path(shutil.copytree(sys.argv[1], tmp / method))
    t = time.time()
    quantize_artifacts(QuantizeConfig(str(d), "text_encoder=int8,clip_image_encoder=int8,sam_image_encoder=int8,decoder=int8,mask_classifier=int8", calib_images=str(calib), method=method, vocabulary=voc), progress=False)
    fp32 = load_predictor(ModelSource(artifacts=str(d)), "onnxruntime")
    low = load_predictor(ModelSource(artifacts=str(d), precision="int8"), "onnxruntime")
    opts = dataclasses.replace(fp32.options, resize=False)
    inputs = capture_graph_inputs(fp32.runners, [image], voc, fp32.cfg, opts)
    rows = graph_parity(fp32.runners, {g: low.runners[g] for g in inputs}, inputs, "int8")
    res[method] = {f"{r.graph}.{r.output}": round(r.rel_error, 4) for r in rows}
    print(method, f"{time.time()-t:.0f}s", res[method], flush=True)

from cmpf.bench.environment import environment
from cmpf.io import write_json
write_json(Path(__file__).parent / "results" / f"precision_calibration_{fp32.cfg.name}.json",
           {"schema": "cmpf.precision_calibration/1", "model": fp32.cfg.name, "calibration_images": 8,
            "rel_error": res, "worst": {m: max(v.values()) for m, v in res.items()}, "machine": environment()})
