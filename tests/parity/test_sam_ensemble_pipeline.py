"""The OpenSeg SAM-mask ensemble end to end: eager vs ONNX Runtime, precomputed masks, the CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import exported
from cmpf.tolerances import MASK_IOU, REL, mask_iou, rel_error

pytest.importorskip("onnxruntime")


def _options(predictor):
    from cmpf.config import SamEnsembleOptions, SamMaskOptions

    # random weights: keep every candidate mask and every classified mask, so the merge does something
    masks = SamMaskOptions(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    return dataclasses.replace(predictor.options, min_size=240, max_size=320, sam_ensemble=True, sam_masks=masks,
                               sam_merge=SamEnsembleOptions(keep_threshold=0.0))


@pytest.fixture(scope="module")
def predictors():
    directory = exported.tiny_export(("onnx",))
    return exported.predictor(directory, "torch"), exported.predictor(directory, "onnxruntime")


@pytest.fixture(scope="module")
def image():
    from cmpf.sample import SAMPLE_IMAGE
    from cmpf.preprocess import load_image

    return load_image(SAMPLE_IMAGE)


def test_online_ensemble_eager_equals_onnxruntime(predictors, image):
    from cmpf.vocabulary import parse_class_list

    eager, ort = predictors
    vocab = parse_class_list(exported.CLASSES)
    options = _options(eager)
    a, b = eager.segment([image], vocab, options), ort.segment([image], vocab, options)
    ma, mb = a.sam_masks[0], b.sam_masks[0]
    assert len(ma) == len(mb) > 1  # 16 points x 3 masks, no filter
    assert mask_iou(ma.masks.numpy(), mb.masks.numpy()) > MASK_IOU
    assert rel_error(b.segmentations[0].semantic, a.segmentations[0].semantic) < REL[("onnxruntime", "fp32")]
    agree = (a.segmentations[0].semantic_labels == b.segmentations[0].semantic_labels).float().mean()
    assert agree > 0.99
    plain = eager.segment([image], vocab, dataclasses.replace(options, sam_ensemble=False))
    assert not torch.allclose(plain.segmentations[0].semantic, a.segmentations[0].semantic)  # the merge acted
    assert torch.equal(plain.segmentations[0].panoptic, a.segmentations[0].panoptic)  # semantic output only


def test_precomputed_masks_through_the_cli(predictors, image, tmp_path, capsys):
    from cmpf.cli import main

    h, w = image.shape[-2:]
    masks = np.zeros((2, h, w), bool)
    masks[0, : h // 2], masks[1, :, : w // 3] = True, True
    np.savez(tmp_path / "sample.npz", masks=masks)
    img = tmp_path / "sample.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(img)
    artifacts = str(exported.tiny_export(("onnx",)))
    out, dump = tmp_path / "out", tmp_path / "t.npz"
    assert main(["run", str(img), "--artifacts", artifacts, "--classes", exported.CLASSES, "--sam-masks",
                 str(tmp_path), "--out", str(out), "--dump-tensors", str(dump)]) == 0
    t = np.load(dump)
    assert t["sam_masks"].shape == (2, h, w) and (t["sam_masks"] == masks).all()
    assert t["sem_seg"].shape[1:] == (h, w)
    capsys.readouterr()
    np.savez(tmp_path / "small.npz", masks=masks[:, :10, :10])
    code = main(["run", str(img), "--artifacts", artifacts, "--classes", "a;b", "--sam-masks",
                 str(tmp_path / "small.npz"), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip().splitlines()
    # the error contract: the last line is the one error (a progress bar may come before it)
    assert code == 2 and err[-1].startswith("error: ") and "small.npz: masks are 10x10 but the image is" in err[-1]
    assert not [line for line in err[:-1] if "error" in line or "Traceback" in line]
    assert not (tmp_path / "o2").exists()


def test_sam_ensemble_needs_sam(tmp_path, capsys):
    from cmpf.cli import main
    from cmpf.sample import SAMPLE_IMAGE

    code = main(["run", str(SAMPLE_IMAGE), "--model", "tiny-fcclip", "--classes", "a;b", "--sam-ensemble",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == "error: --sam-ensemble needs a model with SAM; tiny-fcclip has none"


def test_bench_reports_the_mask_generation(image):
    from cmpf.bench.stages import benchmark_pipeline
    from cmpf.config import SamMaskOptions
    from cmpf.predictor import ModelSource, load_predictor
    from cmpf.vocabulary import parse_class_list

    eager = load_predictor(ModelSource(model="tiny"), seed=0)
    options = dataclasses.replace(eager.options, min_size=120, max_size=160, sam_ensemble=True,
                                  sam_masks=SamMaskOptions(points_per_side=2))
    rows = benchmark_pipeline(eager.runners, eager.cfg, image, parse_class_list("a;b"), warmup=0, iters=1,
                              options=options)
    stages = [r.stage for r in rows]
    assert "sam_mask_decoder" in stages and "sam_masks" in stages and stages[-1] == "segment"


@pytest.mark.slow
def test_online_ensemble_on_aoti_equals_eager(image):
    """The same ensemble with every graph compiled by AOTInductor (opt-in: compiling takes minutes)."""
    from cmpf.vocabulary import parse_class_list

    directory = exported.tiny_export(("aoti",))
    eager, aoti = exported.predictor(directory, "torch"), exported.predictor(directory, "aoti")
    vocab = parse_class_list(exported.CLASSES)
    options = _options(eager)
    a, b = eager.segment([image], vocab, options), aoti.segment([image], vocab, options)
    assert len(a.sam_masks[0]) == len(b.sam_masks[0]) > 1
    assert mask_iou(a.sam_masks[0].masks.numpy(), b.sam_masks[0].masks.numpy()) > MASK_IOU
    assert rel_error(b.segmentations[0].semantic, a.segmentations[0].semantic) < REL[("aoti", "fp32")]
