"""The ``sam_mask_decoder`` graph: torch.export + ONNX (dynamo) with a dynamic number of points,
ONNX Runtime vs eager, and the automatic masks through the ONNX Runtime runner.

The graph is the one of the shared tiny export (SAM input 256); run with 1, 7 and 70 points (labels
1, 0 and -1); the torch.export program is traced with 5.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from cmpf.config import PRESETS  # noqa: E402
from cmpf.tolerances import REL, mask_iou, rel_error  # noqa: E402

TOL = REL[("onnxruntime", "fp32")]
CFG = PRESETS["tiny"]




def _inputs(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s, grid = CFG.sam.img_size, CFG.sam.img_size // CFG.sam.patch_size
    labels = torch.ones(n, 1)
    labels[1::3], labels[2::5] = 0.0, -1.0  # background and ignored points too
    return {"sam_embedding": torch.randn(1, CFG.sam.out_chans, grid, grid, generator=g),
            "point_coords": torch.rand(n, 1, 2, generator=g) * s, "point_labels": labels}


@pytest.fixture(scope="module")
def exported():
    """The graph of the shared tiny export (``tests/exported.py``) and the eager wrapper it came from."""
    import exported as shared
    from cmpf.export.program import export_program
    from cmpf.model.graphs import graph_module

    path = shared.artifact(shared.tiny_export(("onnx",)), "sam_mask_decoder", "onnx").path
    model = shared.tiny_model()  # the export's weights (seed 0)
    module = graph_module(model, "sam_mask_decoder")
    spec = shared.artifact(shared.tiny_export(("onnx",)), "sam_mask_decoder", "onnx").graph
    program = export_program(module, spec, _inputs(5, seed=0))
    return model.sam, module, spec, program, path


def test_onnx_dims_are_named_and_dynamic(exported):
    *_, spec, _, path = exported
    model = onnx.load(str(path))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    assert dims == {t.name: list(t.dims) for t in spec.inputs + spec.outputs}


@pytest.mark.parametrize("n", [1, 7, 70])
def test_onnxruntime_matches_eager(exported, n):
    from cmpf.runtime.onnxruntime_runner import OnnxRuntimeRunner

    _, module, spec, program, path = exported
    inputs = _inputs(n, seed=n)
    eager = dict(zip(spec.output_names, module(*(inputs[k] for k in spec.input_names))))
    ort = OnnxRuntimeRunner(path, spec)(inputs)
    traced = dict(zip(spec.output_names, program.module()(*(inputs[k] for k in spec.input_names))))
    for name, ref in eager.items():
        assert ort[name].shape == ref.shape == (n, *spec.outputs[spec.output_names.index(name)].dims[1:])
        assert rel_error(ort[name], ref) < TOL, name
        assert rel_error(traced[name], ref) < REL[("torch", "fp32")], name
    assert mask_iou(ort["mask_logits"].numpy() > 0, eager["mask_logits"].numpy() > 0) > 0.99


def test_automatic_masks_through_onnxruntime(exported):
    """The same generator on the ONNX Runtime runner and on the eager wrapper: same masks."""
    from cmpf.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from cmpf.sam_masks import SamFrame, SamMaskOptions, generate_masks_from_embedding

    sam, module, spec, _, path = exported
    ort = OnnxRuntimeRunner(path, spec)
    eager = lambda x: dict(zip(spec.output_names, module(*(x[k] for k in spec.input_names))))  # noqa: E731
    embedding = _inputs(1, seed=3)["sam_embedding"]
    frame = SamFrame.predictor((60, 80), CFG.sam.img_size)
    options = SamMaskOptions(points_per_side=6, points_per_batch=13, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                             box_nms_thresh=1.0)  # random weights: keep every candidate
    a = generate_masks_from_embedding(ort, embedding, frame, options)
    b = generate_masks_from_embedding(eager, embedding, frame, options)
    assert len(a) == len(b) > 0
    assert rel_error(a.logits, b.logits) < TOL and rel_error(a.predicted_iou, b.predicted_iou) < TOL
    assert mask_iou(a.masks.numpy(), b.masks.numpy()) > 0.99
