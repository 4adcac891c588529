"""Eager vs ONNX Runtime, graph by graph, on the tiny preset; the artifact directory; `cmpf run --artifacts`.

The graphs are traced at the sizes of ``TraceSizes()`` (batch 2, 128×160, K=3, S=2) and run here at
other batch sizes, image sizes and vocabulary sizes, which proves the dynamic axes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import exported  # noqa: E402
from cmpf.tolerances import MASK_IOU, REL, mask_iou, rel_error  # noqa: E402

TOL = REL[("onnxruntime", "fp32")]
# (batch, h32, w32, num_classes, num_synonyms, num_prompts): batch 1 and 3, 96×128 and 160×96 inputs,
# 2 and 7 classes; none equal to the trace sizes
SIZES = [(1, 3, 4, 2, 1, 1, 1), (3, 5, 3, 7, 3, 5, 7)]


@pytest.fixture(scope="module")
def artifacts():
    return exported.tiny_export(("onnx",))


@pytest.fixture(scope="module")
def runners(artifacts):
    return exported.predictor(artifacts, "torch").runners, exported.predictor(artifacts, "onnxruntime").runners


@pytest.mark.parametrize("sizes", SIZES, ids=["b1-96x128-k2", "b3-160x96-k7"])
@pytest.mark.parametrize("graph", ["clip_image_encoder", "sam_image_encoder", "text_encoder", "decoder",
                                   "mask_classifier", "sam_mask_decoder"])
def test_graph_parity(runners, graph, sizes):
    from cmpf.export.program import TraceSizes, example_inputs

    eager, ort = runners
    inputs = example_inputs(eager[graph].graph, TraceSizes(*sizes), seed=3)
    expected, actual = eager[graph](inputs), ort[graph](inputs)
    assert list(actual) == eager[graph].graph.output_names
    for name, ref in expected.items():
        got = actual[name]
        assert got.shape == ref.shape and got.dtype == ref.dtype, name
        assert torch.isfinite(got).all(), f"{graph}.{name}: non-finite values from ONNX Runtime"
        assert rel_error(got.numpy(), ref.numpy()) < TOL, name
        if name == "pred_masks":
            assert mask_iou(got.numpy() > 0, ref.numpy() > 0) > MASK_IOU


def test_pipeline_inputs_parity(runners):
    """Real inputs (the sample image through the pipeline) for every graph, via `cmpf.bench.parity`."""
    from cmpf.bench.parity import capture_graph_inputs, graph_parity
    from cmpf.sample import SAMPLE_IMAGE
    from cmpf.config import InferenceOptions
    from cmpf.manifest import Manifest
    from cmpf.preprocess import load_image
    from cmpf.vocabulary import parse_class_list

    eager, ort = runners
    cfg = Manifest.read(exported.tiny_export(("onnx",))).model
    image, vocab = load_image(SAMPLE_IMAGE), parse_class_list(exported.CLASSES)
    inputs = capture_graph_inputs(eager, [image], vocab, cfg, InferenceOptions(min_size=480, max_size=640))
    rows = graph_parity(eager, ort, inputs)
    assert {r.graph for r in rows} == set(eager) - {"sam_mask_decoder"}  # prompted only by the SAM ensemble
    assert all(r.ok and r.rel_error < TOL for r in rows), [r for r in rows if not r.ok]


def test_onnx_files(artifacts):
    manifest = json.loads((artifacts / "manifest.json").read_text())
    for graph, entry in manifest["graphs"].items():
        model = onnx.load(str(artifacts / entry["files"]["onnx"]["path"]), load_external_data=False)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
        onnx.checker.check_model(model)
        spec = entry["spec"]
        for value, t in zip(model.graph.input, spec["inputs"]):
            assert value.name == t["name"]
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            assert dims == t["dims"], (graph, value.name)  # symbolic dims carry the spec's names


def test_manifest(artifacts):
    import dataclasses

    from cmpf.config import CLIP_PIXEL_MEAN, get_config
    from cmpf.io import sha256_file
    from cmpf.manifest import MANIFEST_VERSION

    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["format_version"] == MANIFEST_VERSION
    assert manifest["model"] == json.loads(json.dumps(dataclasses.asdict(get_config("tiny"))))
    assert manifest["preprocessing"]["clip_pixel_mean"] == list(CLIP_PIXEL_MEAN)
    assert {"torch", "onnx", "onnxruntime", "cmpf"} <= set(manifest["producer"])
    on_disk = sorted(p.name for p in artifacts.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk  # every file hashed, no stray temp file
    assert all(sha256_file(artifacts / n) == h for n, h in manifest["files"].items())
    assert manifest["export"]["command"].startswith("cmpf export --model tiny --out ")


def test_interrupted_export_leaves_no_file(tmp_path, monkeypatch):
    from cmpf.export.api import ExportConfig, export_model

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx.checker, "check_model", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_model(ExportConfig("tiny", str(tmp_path), graphs=("mask_classifier",)), model=exported.tiny_model(),
                     progress=False)
    assert list(tmp_path.iterdir()) == []  # all or nothing: no weights, no half model, no staging dir, no manifest


def test_cmpf_run_artifacts_equals_eager(artifacts, tmp_path):
    """`cmpf run --artifacts` (ONNX Runtime) vs `cmpf run --model tiny --checkpoint` on the same weights."""
    from cmpf.cli import main
    from cmpf.sample import SAMPLE_IMAGE

    common = [str(SAMPLE_IMAGE), "--classes", exported.CLASSES, "--things", "cat;dog"]
    assert main(["run", *common, "--artifacts", str(artifacts), "--out", str(tmp_path / "ort"),
                 "--dump-tensors", str(tmp_path / "ort.npz")]) == 0
    assert main(["run", *common, "--model", "tiny", "--checkpoint", str(artifacts / "weights.pth"),
                 "--out", str(tmp_path / "eager"), "--dump-tensors", str(tmp_path / "eager.npz")]) == 0
    ort, eager = np.load(tmp_path / "ort.npz"), np.load(tmp_path / "eager.npz")
    assert rel_error(ort["sam_embedding"], eager["sam_embedding"]) < TOL
    for name in ("pred_logits", "pred_masks", "out_vocab_logits", "mask_cls_logprob", "sem_seg"):
        assert rel_error(ort[name], eager[name]) < TOL, name
    assert mask_iou(ort["pred_masks"] > 0, eager["pred_masks"] > 0) > MASK_IOU
    assert (ort["sem_seg"].argmax(0) == eager["sem_seg"].argmax(0)).mean() > 0.99
    assert mask_iou(ort["panoptic_seg"] > 0, eager["panoptic_seg"] > 0) > MASK_IOU
    names = lambda d: sorted(p.name for p in (tmp_path / d).iterdir())  # noqa: E731
    assert names("ort") == names("eager")
