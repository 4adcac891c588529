"""examples/cpp: the whole image -> semantic map + panoptic path in C++ from the AOTInductor packages,
built with the system g++ against the torch wheel, must give what ``cmpf run --backend aoti --no-resize``
gives:

- on the random-weight tiny export, its labels and the (K, H, W) scores they are the argmax of (the
  random model gives one class nearly everywhere, so the scores are what can tell a wrong step; it
  gives no panoptic segment at all);
- on the tiny preset trained on ``cmpf demo``'s generated scenes, its panoptic id map and segments on
  a held-out scene that the model splits into several segments (thing and stuff).

Slow: they compile every graph with AOTInductor (minutes on 2 cores), train the tiny model (about two
minutes) and build against libtorch. The TensorRT variant (segment_trt.cpp) cannot be built here; its
Makefile target must refuse with one line when TensorRT is absent, which is checked fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import exported

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cpp"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the Makefile's g++ line is Linux-specific")


@pytest.fixture(scope="module")
def cpp_binary(tmp_path_factory) -> Path:
    """``make -C examples/cpp`` (the AOTInductor program), once per module."""
    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("g++ and make are needed to build the C++ example")
    build = tmp_path_factory.mktemp("cpp-build")
    result = subprocess.run(["make", "-C", str(EXAMPLE), f"PYTHON={sys.executable}", f"BUILD={build}"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return build / "cmpf_segment"


def _trained_aoti_export() -> Path:
    """The tiny preset trained as ``cmpf demo`` trains it, exported with AOTInductor (cached like ``exported``)."""
    import torch

    from cmpf.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_coco_panoptic
    from cmpf.demo import TRAIN_IMAGES, TRAIN_SIZE, DemoConfig
    from cmpf.export.api import ExportConfig, export_model
    from cmpf.io import write_text
    from cmpf.train.loop import TrainConfig, train

    root = exported._root() / "tiny-trained-aoti"
    if (root / "artifacts" / "manifest.json").is_file():
        return root / "artifacts"
    steps = DemoConfig.train_iters
    make_synthetic_coco_panoptic(root / "data", TRAIN_IMAGES, TRAIN_SIZE, seed=0)
    vocab = write_text(root / "data" / "vocabulary.txt", "".join(f"{c.id}:{c.name}\n" for c in SYNTHETIC_CLASSES))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as cmpf demo: the tiny model trains ~10x faster on one thread
    try:
        trained = train(TrainConfig(preset="tiny", data_root=str(root / "data"), out_dir=str(root / "train"),
                                    max_iter=steps, batch_size=4, lr=1e-3, lr_steps=(0.85,), image_size=TRAIN_SIZE,
                                    num_points=1024, num_workers=0, seed=0, checkpoint_period=steps, log_period=10,
                                    device="cpu"))
    finally:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    export_model(ExportConfig("tiny", str(root / "artifacts"), checkpoint=str(trained.final_weights),
                              formats=("aoti",), vocab=str(vocab), train_vocab=str(vocab),
                              things=";".join(c.name for c in SYNTHETIC_CLASSES if c.isthing)), progress=False)
    return root / "artifacts"


def _run_both(binary: Path, artifacts: Path, image: Path, tmp_path: Path, classes: tuple[str, ...] = ()) -> Path:
    """``cmpf run`` into tmp_path/run (+ run.npz), prepare.py, and the C++ program into tmp_path/cpp."""
    from cmpf.cli import main

    Image.open(image).convert("RGB").save(tmp_path / "scene.ppm")
    assert main(["run", str(image), "--artifacts", str(artifacts), "--backend", "aoti", "--no-resize", *classes,
                 "--out", str(tmp_path / "run"), "--no-progress", "--dump-tensors", str(tmp_path / "run.npz")]) == 0
    subprocess.run([sys.executable, str(EXAMPLE / "prepare.py"), str(artifacts), *classes,
                    "--out", str(tmp_path / "bundle")], check=True, timeout=300)
    (tmp_path / "cpp").mkdir()
    result = subprocess.run([str(binary), str(artifacts), str(tmp_path / "bundle"), str(tmp_path / "scene.ppm"),
                             str(tmp_path / "cpp")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "cpp"


def _read_pgm16(path: Path) -> np.ndarray:
    magic, w, h, maxval, data = path.read_bytes().split(maxsplit=4)
    assert (magic, maxval) == (b"P5", b"65535")
    return np.frombuffer(data, dtype=">u2").reshape(int(h), int(w)).astype(np.int64)


@pytest.mark.slow
@linux_only
def test_cpp_semantic_map_equals_cmpf_run(cpp_binary, tmp_path):
    artifacts = exported.tiny_export(("aoti",))
    y, x = np.mgrid[:40, :56]
    pixels = (np.stack([x * 4, y * 6, (x * y) % 97], -1) % 256).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "scene.png")
    out = _run_both(cpp_binary, artifacts, tmp_path / "scene.png", tmp_path, ("--classes", exported.CLASSES))
    expected = np.asarray(Image.open(tmp_path / "run" / "semantic" / "scene.png"))
    labels = np.asarray(Image.open(out / "semantic.pgm"))
    assert labels.shape == expected.shape == (40, 56)
    assert (labels == expected).all(), f"{(labels != expected).mean():.2%} of the pixels differ"
    reference = np.load(tmp_path / "run.npz")["sem_seg"]  # (K, H, W) float32, cmpf run's semantic scores
    scores = np.fromfile(out / "scores.f32", dtype=np.float32).reshape(reference.shape)
    assert reference.std() > 0 and np.abs(scores - reference).max() <= 1e-5 * np.abs(reference).max()


@pytest.mark.slow
@linux_only
def test_cpp_panoptic_equals_cmpf_run_on_a_trained_model(cpp_binary, tmp_path):
    from cmpf.codecs import rgb2id
    from cmpf.data.synthetic import make_synthetic_coco_panoptic
    from cmpf.demo import SCENE_SIZE

    artifacts = _trained_aoti_export()
    scenes = make_synthetic_coco_panoptic(tmp_path / "scenes", 1, SCENE_SIZE, seed=1, split="val2017",
                                          image_format="png", num_crowd_only=0)  # cmpf demo's first held-out scene
    image = next(scenes.image_dir.glob("*.png"))
    out = _run_both(cpp_binary, artifacts, image, tmp_path)  # the export's own vocabulary, thing flags and ids
    expected_map = rgb2id(np.asarray(Image.open(tmp_path / "run" / "panoptic" / f"{image.stem}.png")))
    coco = json.loads((tmp_path / "run" / "panoptic.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    expected = [(s["id"], names[s["category_id"]], s["isthing"], s["area"])
                for s in coco["annotations"][0]["segments_info"]]
    segments = json.loads((out / "segments.json").read_text())
    got = [(s["id"], s["name"], s["isthing"], s["area"]) for s in segments]
    assert len(expected) >= 2 and {s[2] for s in expected} == {True, False}, expected  # a scene that can fail
    assert got == expected
    panoptic = _read_pgm16(out / "panoptic.pgm")
    assert panoptic.shape == expected_map.shape == SCENE_SIZE
    assert (panoptic == expected_map).all(), f"{(panoptic != expected_map).mean():.2%} of the pixels differ"
    assert (np.asarray(Image.open(out / "semantic.pgm")) ==
            np.asarray(Image.open(tmp_path / "run" / "semantic" / f"{image.stem}.png"))).all()


@linux_only
def test_trt_target_refuses_without_tensorrt_and_the_aoti_target_is_unchanged(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is needed")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(["make", "-C", str(EXAMPLE), "trt", f"BUILD={tmp_path / 'build'}", f"TRT_INCLUDE={empty}",
                             f"TRT_LIB={empty}", f"CUDA={empty}", f"PYTHON={sys.executable}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    refusal = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert len(refusal) == 1 and "needs TensorRT 10" in refusal[0], result.stderr
    assert "NvInfer.h" in refusal[0] and "libnvinfer" in refusal[0] and "cuda_runtime_api.h" in refusal[0]
    assert not (tmp_path / "build").exists()
    dry = subprocess.run(["make", "-C", str(EXAMPLE), "-n", f"BUILD={tmp_path / 'build'}", f"PYTHON={sys.executable}"],
                         capture_output=True, text=True, timeout=60)  # the default target: the AOTInductor program
    assert dry.returncode == 0, dry.stderr
    compile_line = next(line for line in dry.stdout.splitlines() if line.startswith("g++"))
    assert f"segment.cpp -o {tmp_path / 'build' / 'cmpf_segment'} " in compile_line and "nvinfer" not in compile_line
