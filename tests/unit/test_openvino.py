"""The openvino backend on the tiny preset's fp32 ONNX files: every graph output within the table's fp32
bound of ONNX Runtime, the same semantic labels from `cmpf run`, and its refusals (device, spec, hint).

Inputs are random at sizes other than the trace sizes (batch 1 and 3), which exercises the dynamic axes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the reference side of these tests is ONNX Runtime")
pytest.importorskip("openvino", reason="the openvino backend needs openvino (pip install 'cmpf[openvino]')")

import exported  # noqa: E402
from cmpf.tolerances import rel_error, rel_tolerance  # noqa: E402

IMAGE = Path(__file__).resolve().parents[2] / "cmpf" / "assets" / "sample.png"  # the bundled sample
GRAPHS = ("clip_image_encoder", "sam_image_encoder", "text_encoder", "decoder", "mask_classifier",
          "sam_mask_decoder")
# (batch, h32, w32, num_classes, num_synonyms, num_prompts, num_points): none equal to the trace sizes
SIZES = {"b1-96x128-k2": (1, 3, 4, 2, 1, 1, 1), "b3-160x96-k7": (3, 5, 3, 7, 3, 5, 7)}


@pytest.fixture(scope="module")
def artifacts():
    return exported.tiny_export(("onnx",))


@pytest.fixture(scope="module")
def runners(artifacts):
    from cmpf.manifest import Manifest
    from cmpf.runtime import load_runners

    manifest = Manifest.read(artifacts)
    return load_runners(manifest, "onnxruntime"), load_runners(manifest, "openvino")


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("graph", GRAPHS)
def test_graph_matches_onnxruntime(runners, graph, sizes):
    from cmpf.export.program import TraceSizes, example_inputs

    ort, ov = runners
    assert ov[graph].backend == "openvino" and ov[graph].inference_precision == "f32"
    inputs = example_inputs(ort[graph].graph, TraceSizes(*sizes), seed=5)
    expected, actual = ort[graph](inputs), ov[graph](inputs)
    assert list(actual) == ort[graph].graph.output_names
    for name, ref in expected.items():
        got = actual[name]
        assert got.shape == ref.shape and got.dtype == ref.dtype, name
        assert torch.isfinite(got).all(), f"{graph}.{name}: non-finite values from OpenVINO"
        assert rel_error(got, ref) < rel_tolerance("openvino", "fp32"), name


def test_cmpf_run_same_labels_as_onnxruntime(artifacts, tmp_path):
    """The random-weight tiny model gives every pixel the same label, so the instance masks (which do vary
    across the image) are compared too, by IoU."""
    from PIL import Image

    from cmpf.cli import main
    from cmpf.tolerances import MASK_IOU, mask_iou

    common = [str(IMAGE), "--classes", exported.CLASSES, "--things", "cat;dog", "--artifacts", str(artifacts)]
    labels = {}
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / backend
        assert main(["run", *common, "--backend", backend, "--out", str(out),
                     "--dump-tensors", str(tmp_path / f"{backend}.npz")]) == 0
        files = [f for f in sorted(out.rglob("*.png")) if "semantic" in str(f.relative_to(out))]  # the label map
        assert len(files) == 1, files
        labels[backend] = np.asarray(Image.open(files[0]))
    assert np.array_equal(labels["openvino"], labels["onnxruntime"])
    ort, ov = np.load(tmp_path / "onnxruntime.npz"), np.load(tmp_path / "openvino.npz")
    for name in ("sem_seg", "pred_masks", "instance_scores"):
        assert rel_error(ov[name], ort[name]) < rel_tolerance("openvino", "fp32"), name
    assert np.array_equal(ov["instance_classes"], ort["instance_classes"]) and len(ort["instance_classes"])
    for got, ref in zip(ov["instance_masks"], ort["instance_masks"]):
        assert 0 < ref.mean() < 1 and mask_iou(got, ref) > MASK_IOU


def test_bad_device_is_refused_in_one_line(artifacts, tmp_path, capsys):
    from cmpf.cli import main
    from cmpf.errors import InputError
    from cmpf.runtime import load_runner

    with pytest.raises(InputError, match=r"runs on the CPU only, not cuda:0; use --device cpu"):
        load_runner("openvino", exported.artifact(artifacts, "text_encoder", "onnx"), "cuda:0")
    code = main(["run", str(IMAGE), "--classes", "cat", "--artifacts", str(artifacts), "--backend", "openvino",
                 "--device", "meta", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--device cpu" in err[0], err


def test_file_that_is_not_the_spec_is_refused(artifacts):
    from cmpf.manifest import ArtifactError, Manifest
    from cmpf.runtime.openvino_runner import OpenVinoRunner

    manifest = Manifest.read(artifacts)
    text_file = manifest.artifact("text_encoder", "onnx").path
    with pytest.raises(ArtifactError, match=r"text_encoder.fp32.onnx: inputs .*token_ids.* do not match the "
                                            r"mask_classifier spec .*; re-export the graph"):
        OpenVinoRunner(text_file, manifest.graphs["mask_classifier"].spec)


def test_bf16_hint_runs_within_its_bound_or_is_refused(artifacts, runners):
    """bf16 where the CPU has bf16 kernels; elsewhere an error (OpenVINO itself would quietly run f32)."""
    import openvino

    from cmpf.errors import EnvironmentProblem, InputError
    from cmpf.export.program import TraceSizes, example_inputs
    from cmpf.runtime.openvino_runner import OpenVinoRunner

    artifact = exported.artifact(artifacts, "clip_image_encoder", "onnx")
    with pytest.raises(InputError, match="inference precision 'int4'; choose one of fp32, bf16"):
        OpenVinoRunner(artifact.path, artifact.graph, inference_precision="int4")
    assert OpenVinoRunner(artifact.path, artifact.graph, threads=1).threads == 1
    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(EnvironmentProblem, match="no bf16 kernels on this CPU .*; run the fp32 or int8 files"):
            OpenVinoRunner(artifact.path, artifact.graph, inference_precision="bf16")
        return
    runner = OpenVinoRunner(artifact.path, artifact.graph, threads=1, inference_precision="bf16")
    assert runner.threads == 1 and runner.inference_precision == "bf16"
    inputs = example_inputs(artifact.graph, TraceSizes(*SIZES["b1-96x128-k2"]), seed=5)
    expected, actual = runners[0]["clip_image_encoder"](inputs), runner(inputs)
    for name, ref in expected.items():
        assert rel_error(actual[name], ref) < rel_tolerance("openvino", "bf16"), name


def test_doctor_lists_openvino():
    import openvino

    from cmpf.doctor import report

    rows = dict(report())
    assert rows["openvino"] == openvino.__version__ and "CPU" in rows["openvino devices"].split(", ")
    assert "FP32" in rows["openvino CPU capabilities"].split(", ")


def test_runners_released_in_any_order_keep_the_threads_signal_stack(artifacts):
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack while compiling and restores it on
    release; released out of order it left the stack on unmapped memory, and the next child process to
    end (torch's DataLoader SIGCHLD handler) killed the test run with SIGSEGV. Now it stays as it was."""
    import faulthandler
    import gc
    import signal
    import subprocess
    import sys

    from cmpf.export.program import TraceSizes, example_inputs
    from cmpf.runtime.openvino_runner import OpenVinoRunner, signal_stack

    faulthandler.enable()  # gives this thread an alternate signal stack (pytest's does too)
    before = signal_stack()
    artifact = exported.artifact(artifacts, "mask_classifier", "onnx")
    first, second = (OpenVinoRunner(artifact.path, artifact.graph) for _ in range(2))
    inputs = example_inputs(artifact.graph, TraceSizes(*SIZES["b1-96x128-k2"]), seed=5)
    first(inputs), second(inputs)  # each compiles its model on its first call
    del first  # the first made released first: the order that broke it
    gc.collect()
    del second
    gc.collect()
    assert signal_stack() == before
    previous = signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler runs on the alternate stack
    try:
        assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0  # its SIGCHLD is delivered
    finally:
        signal.signal(signal.SIGCHLD, previous)


def test_each_input_shape_compiles_static_and_the_oldest_is_dropped(artifacts, runners):
    """Static models per shape (the CPU plugin fuses attention only there), at most ``shapes`` kept; the
    outputs at every shape stay within the fp32 bound of ONNX Runtime; ``shapes=0``: one dynamic model."""
    from cmpf.export.program import TraceSizes, example_inputs
    from cmpf.runtime.openvino_runner import OpenVinoRunner

    artifact = exported.artifact(artifacts, "decoder", "onnx")
    runner, dynamic = OpenVinoRunner(artifact.path, artifact.graph, shapes=1), OpenVinoRunner(
        artifact.path, artifact.graph, shapes=0)
    for sizes in (*SIZES.values(), SIZES["b1-96x128-k2"]):
        inputs = example_inputs(artifact.graph, TraceSizes(*sizes), seed=5)
        expected = runners[0]["decoder"](inputs)
        for r in (runner, dynamic):
            actual = r(inputs)
            for name, ref in expected.items():
                assert rel_error(actual[name], ref) < rel_tolerance("openvino", "fp32"), name
        (compiled, _), = runner._requests.values()
        assert all(port.get_partial_shape().is_static for port in compiled.inputs)
        first = artifact.graph.inputs[0].name
        assert tuple(compiled.inputs[0].get_partial_shape().to_shape()) == tuple(inputs[first].shape)
    (compiled, _), = dynamic._requests.values()
    assert not all(port.get_partial_shape().is_static for port in compiled.inputs)
