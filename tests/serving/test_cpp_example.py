"""examples/cpp: the whole image -> semantic map path in C++ from the AOTInductor packages, built with
the system g++ against the torch wheel and run on the tiny export; its labels must equal ``cmpf run``'s,
and so must the (K, H, W) scores they are the argmax of (the random-weight model gives one class
nearly everywhere, so the scores are what can tell a wrong step).

Slow: it needs every graph compiled by AOTInductor (minutes on 2 cores) and a libtorch build.
"""

from __future__ import annotations

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


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Makefile's g++ line is Linux-specific")
def test_cpp_semantic_map_equals_cmpf_run(tmp_path):
    from cmpf.cli import main

    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("g++ and make are needed to build the C++ example")
    artifacts = exported.tiny_export(("aoti",))
    y, x = np.mgrid[:40, :56]
    pixels = (np.stack([x * 4, y * 6, (x * y) % 97], -1) % 256).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "scene.png")
    (tmp_path / "scene.ppm").write_bytes(b"P6\n56 40\n255\n" + pixels.tobytes())
    assert main(["run", str(tmp_path / "scene.png"), "--artifacts", str(artifacts), "--backend", "aoti",
                 "--no-resize", "--classes", exported.CLASSES, "--out", str(tmp_path / "run"), "--no-progress",
                 "--dump-tensors", str(tmp_path / "run.npz")]) == 0
    subprocess.run([sys.executable, str(EXAMPLE / "prepare.py"), str(artifacts), "--classes", exported.CLASSES,
                    "--out", str(tmp_path / "bundle")], check=True, timeout=300)
    build = subprocess.run(["make", "-C", str(EXAMPLE), f"PYTHON={sys.executable}", f"BUILD={tmp_path / 'build'}"],
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    result = subprocess.run([str(tmp_path / "build" / "cmpf_segment"), str(artifacts), str(tmp_path / "bundle"),
                             str(tmp_path / "scene.ppm"), str(tmp_path / "labels.pgm"), str(tmp_path / "scores.f32")],
                            capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    expected = np.asarray(Image.open(tmp_path / "run" / "semantic" / "scene.png"))
    labels = np.asarray(Image.open(tmp_path / "labels.pgm"))
    assert labels.shape == expected.shape == (40, 56)
    assert (labels == expected).all(), f"{(labels != expected).mean():.2%} of the pixels differ"
    reference = np.load(tmp_path / "run.npz")["sem_seg"]  # (K, H, W) float32, cmpf run's semantic scores
    scores = np.fromfile(tmp_path / "scores.f32", dtype=np.float32).reshape(reference.shape)
    assert reference.std() > 0 and np.abs(scores - reference).max() <= 1e-5 * np.abs(reference).max()
