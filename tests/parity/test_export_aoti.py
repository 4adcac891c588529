"""Eager vs AOTInductor (CPU) on the tiny preset, and the C++ loader example.

AOTInductor compiles C++ for every graph, which takes minutes for the big ones on 2 cores: the
default run compiles the two small graphs (text encoder, mask classifier) and the C++ example; the
whole model is compiled under ``-m slow``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import exported
from cmpf.tolerances import MASK_IOU, REL, mask_iou, rel_error

TOL = REL[("aoti", "fp32")]
SMALL = ("text_encoder", "mask_classifier")
ALL = ("clip_image_encoder", "sam_image_encoder", "text_encoder", "decoder", "mask_classifier", "sam_mask_decoder")
SIZES = [(1, 3, 4, 2, 1, 1, 1), (3, 5, 3, 7, 3, 5, 7)]  # as in test_export_onnx: ≠ trace sizes
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "aoti_cpp"


def _check(directory: Path, graph: str, sizes) -> None:
    from cmpf.export.program import TraceSizes, example_inputs
    from cmpf.runtime import load_runner

    artifact = exported.artifact(directory, graph, "aoti")
    eager, aoti = load_runner("torch", artifact), load_runner("aoti", artifact)
    inputs = example_inputs(eager.graph, TraceSizes(*sizes), seed=3)
    expected, actual = eager(inputs), aoti(inputs)
    assert list(actual) == eager.graph.output_names
    for name, ref in expected.items():
        got = actual[name]
        assert got.shape == ref.shape and got.dtype == ref.dtype, name
        assert torch.isfinite(got).all(), name
        assert rel_error(got.numpy(), ref.numpy()) < TOL, name
        if name == "pred_masks":
            assert mask_iou(got.numpy() > 0, ref.numpy() > 0) > MASK_IOU


@pytest.mark.parametrize("sizes", SIZES, ids=["b1-96x128-k2", "b3-160x96-k7"])
@pytest.mark.parametrize("graph", SMALL)
def test_small_graph_parity(graph, sizes):
    _check(exported.tiny_export(("aoti",), SMALL), graph, sizes)


@pytest.mark.slow
@pytest.mark.parametrize("sizes", SIZES, ids=["b1-96x128-k2", "b3-160x96-k7"])
@pytest.mark.parametrize("graph", ALL)
def test_all_graph_parity(graph, sizes):
    _check(exported.tiny_export(("onnx", "aoti")), graph, sizes)


@pytest.mark.slow
def test_onnx_and_aoti_in_one_export_keep_sam_mask_decoder(tmp_path):
    """Both formats of the graph with data-dependent sizes in one export (one trace each: the ONNX exporter
    consumes the program it is given, and AOTInductor then failed with PendingUnbackedSymbolNotFound)."""
    from cmpf.export.api import ExportConfig, export_model
    from cmpf.manifest import Manifest

    export_model(ExportConfig("tiny", str(tmp_path / "both"), formats=("onnx", "aoti"), graphs=("sam_mask_decoder",)),
                 model=exported.tiny_model(), progress=False)
    manifest = Manifest.read(tmp_path / "both")
    assert {a.format for a in (manifest.artifact("sam_mask_decoder", f) for f in ("onnx", "aoti"))} == {"onnx", "aoti"}
    _check(tmp_path / "both", "sam_mask_decoder", SIZES[1])


@pytest.mark.slow
def test_cmpf_run_aoti_equals_onnxruntime(tmp_path):
    import numpy as np

    from cmpf.cli import main
    from cmpf.sample import SAMPLE_IMAGE

    directory = exported.tiny_export(("onnx", "aoti"))
    for backend in ("aoti", "onnxruntime"):
        assert main(["run", str(SAMPLE_IMAGE), "--classes", exported.CLASSES, "--artifacts", str(directory),
                     "--backend", backend, "--out", str(tmp_path / backend),
                     "--dump-tensors", str(tmp_path / f"{backend}.npz")]) == 0
    a, o = np.load(tmp_path / "aoti.npz"), np.load(tmp_path / "onnxruntime.npz")
    for name in ("pred_logits", "pred_masks", "out_vocab_logits", "sem_seg"):
        assert rel_error(a[name], o[name]) < 2 * TOL, name


def _compile_example(out: Path) -> Path:
    """Build examples/aoti_cpp/main.cpp with g++ against the torch wheel (the README's command)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: cannot build the C++ example")
    torch_dir = Path(torch.__file__).parent
    if not (torch_dir / "include/torch/csrc/inductor/aoti_package/model_package_loader.h").is_file():
        pytest.skip("this torch wheel ships no AOTIModelPackageLoader header")
    exe = out / "cmpf_aoti_text_encoder"
    cmd = ["g++", "-std=c++20", "-O1", "-w", str(EXAMPLE / "main.cpp"), "-o", str(exe),
           f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
           f"-L{torch_dir / 'lib'}", f"-Wl,-rpath,{torch_dir / 'lib'}", "-ltorch", "-ltorch_cpu", "-lc10"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"the C++ example does not build:\n{' '.join(cmd)}\n{result.stderr[-3000:]}")
    return exe


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the g++ command line is Linux-specific")
def test_cpp_example_runs_the_package(tmp_path):
    from cmpf.runtime import load_runner

    directory = exported.tiny_export(("aoti",), SMALL)
    exe = _compile_example(tmp_path)
    result = subprocess.run([str(exe), str(directory / "text_encoder.fp32.pt2")], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("text_features [3, 64] float"), result.stdout
    norms = torch.tensor([float(x) for x in result.stdout.split("L2 norms:")[1].split()])
    # the same tokens (same seed, same generator) through the Python runner of the same package
    torch.manual_seed(0)
    tokens = torch.zeros(3, 77, dtype=torch.long)
    tokens[:, 0], tokens[:, 7] = 49406, 49407
    tokens[:, 1:7] = torch.randint(1, 49000, (3, 6))
    runner = load_runner("aoti", exported.artifact(directory, "text_encoder", "aoti"))
    features = runner({"token_ids": tokens})["text_features"]
    torch.testing.assert_close(norms, features.norm(dim=1), rtol=1e-4, atol=0)
