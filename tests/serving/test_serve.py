"""A real Triton Inference Server on the tiny artifacts (localhost, free ports, always stopped).

The server runs without the official resize (``--no-resize``), as ``cmpf run --no-resize`` here:
at the tiny images' own sizes every request takes milliseconds instead of seconds.

``cmpf client`` must write exactly the files ``cmpf run`` writes on the same artifacts; bad
requests get one clear 400-style message and the server goes on serving.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import exported

pytest.importorskip("pytriton", reason="cmpf serve needs nvidia-pytriton (pip install 'cmpf[serve]')")
pytest.importorskip("tritonclient.http", reason="cmpf client needs tritonclient (pip install 'cmpf[serve]')")

from cmpf.serving.server import free_ports  # noqa: E402

MAX_IMAGE_BYTES = 100_000


@pytest.fixture(scope="module")
def artifacts() -> Path:
    return exported.tiny_export(("onnx",))


@pytest.fixture(scope="module")
def server(artifacts):
    from cmpf.serving.repository import ServeConfig
    from cmpf.serving.server import TritonServer

    http, grpc, metrics = free_ports(3)
    cfg = ServeConfig(str(artifacts), "onnxruntime", http_port=http, grpc_port=grpc, metrics_port=metrics,
                      max_batch=4, max_image_bytes=MAX_IMAGE_BYTES, resize=False, startup_timeout_s=150)
    server = TritonServer(cfg)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(48, 64), (40, 56)]):
        y, x = np.mgrid[:h, :w]
        pixels = np.stack([x * 4, y * 5, (x + y) * 2], -1) % 256 + rng.integers(0, 30, (h, w, 3))
        paths.append(folder / f"{i + 1:03d}.png")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(paths[-1])
    return paths


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_client_writes_what_cmpf_run_writes(server, artifacts, images, tmp_path):
    from cmpf.cli import main

    classes = ["--classes", exported.CLASSES, "--things", "cat;dog"]
    assert main(["run", *map(str, images), "--artifacts", str(artifacts), *classes, "--out", str(tmp_path / "run"),
                 "--no-resize", "--no-progress"]) == 0
    assert main(["client", *map(str, images), "--url", server.http_url, *classes,
                 "--out", str(tmp_path / "client")]) == 0
    expected = files(tmp_path / "run")
    assert len(expected) == 4 * len(images) + 2
    assert files(tmp_path / "client") == expected


def test_pixels_grpc_and_another_vocabulary(server, images):
    from cmpf.serving.client import SegmentClient
    from cmpf.vocabulary import parse_class_list

    http, grpc = SegmentClient(server.http_url), SegmentClient(server.grpc_url, "grpc")
    assert http.is_ready() and grpc.is_ready()
    vocabulary = parse_class_list(exported.CLASSES)
    by_file, used = http.segment(images[0].read_bytes(), vocabulary)
    by_pixels, _ = http.segment(np.asarray(Image.open(images[0]).convert("RGB")), vocabulary)
    by_grpc, _ = grpc.segment(images[0].read_bytes(), vocabulary)
    assert used == vocabulary
    for seg in (by_pixels, by_grpc):
        assert (seg.semantic_labels == by_file.semantic_labels).all() and (seg.panoptic == by_file.panoptic).all()
        assert seg.segments == by_file.segments
    other, used = http.segment(images[0].read_bytes(), parse_class_list("tree;car"))
    assert used.names == ["tree", "car"] and int(other.semantic_labels.max()) <= 1
    http.close()
    grpc.close()
    with urllib.request.urlopen(f"http://localhost:{server.cfg.metrics_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    counter = 'nv_inference_request_success{model="cmpf_segment"'
    served = [line for line in metrics.splitlines() if line.startswith(counter)]
    assert served and float(served[0].split()[-1]) >= 4  # Prometheus counts what was served


def test_bad_requests_get_one_clear_message_and_the_server_goes_on(server, images):
    from cmpf.errors import InputError
    from cmpf.serving.client import SegmentClient
    from cmpf.serving.protocol import text_tensor
    from cmpf.vocabulary import parse_class_list

    client = SegmentClient(server.http_url)
    good = np.frombuffer(images[0].read_bytes(), dtype=np.uint8)[None].copy()
    vocab = text_tensor(exported.CLASSES)
    noise = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    cases = {
        "truncated": {"image": good[:, : good.shape[1] // 3], "vocabulary": vocab},
        "not an image file": {"image": good[:, ::-1].copy(), "vocabulary": vocab},
        "empty": {"image": good, "vocabulary": text_tensor(" ; ")},
        "no vocabulary": {"image": good},  # the tiny export records none
        "above this server's limit": {"image": np.zeros((1, MAX_IMAGE_BYTES + 1), np.uint8), "vocabulary": vocab},
        "exactly one of": {"image": good, "pixels": noise[None], "vocabulary": vocab},
        "too small": {"pixels": noise[None, :2, :2], "vocabulary": vocab},
        "not UTF-8": {"image": good, "vocabulary": np.full((1, 3), 255, np.uint8)},
    }
    for needle, inputs in cases.items():
        with pytest.raises(InputError, match="the server refused the request") as e:
            client.infer(inputs)
        assert needle in str(e.value) and "\n" not in str(e.value), (needle, str(e.value))
    assert client.is_ready()
    seg, _ = client.segment(images[0].read_bytes(), parse_class_list(exported.CLASSES))  # still serving
    assert tuple(seg.panoptic.shape) == (48, 64)
    client.close()


@pytest.mark.slow
def test_load_benchmark_runs_without_errors(artifacts, tmp_path):
    """``benchmarks/serve_load.py`` end to end on two clients x two requests (its own server)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "load.json"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(root / "benchmarks" / "serve_load.py"), str(artifacts), "--clients", "2",
                    "--requests", "2", "--warmup", "1", "--size", "48x64", "--out", str(out)], check=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and report["requests_ok"] == 4 and report["latency_ms"]["p99"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("backend, formats", [("openvino", ("onnx",)), ("aoti", ("aoti",))])
def test_other_backends_serve_what_cmpf_run_writes(backend, formats, images, tmp_path):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino backend needs openvino ('cmpf[openvino]')")
    from cmpf.cli import main
    from cmpf.serving.repository import ServeConfig
    from cmpf.serving.server import TritonServer

    artifacts = exported.tiny_export(formats)
    classes = ["--classes", exported.CLASSES]
    assert main(["run", *map(str, images), "--artifacts", str(artifacts), "--backend", backend, *classes,
                 "--out", str(tmp_path / "run"), "--no-resize", "--no-progress"]) == 0
    http, grpc, metrics = free_ports(3)
    server = TritonServer(ServeConfig(str(artifacts), backend, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                      resize=False, startup_timeout_s=300))
    try:
        server.start()
        assert main(["client", *map(str, images), "--url", server.http_url, *classes,
                     "--out", str(tmp_path / "client")]) == 0
    finally:
        server.stop()
    assert files(tmp_path / "client") == files(tmp_path / "run")


@pytest.mark.slow
def test_cmpf_serve_command_serves_until_sigterm_and_leaves_nothing(artifacts):
    """``cmpf serve`` as users start it: announces the endpoints, serves, stops on SIGTERM with exit 0,
    and leaves no server or stub process and no workspace behind."""
    import glob
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from cmpf.serving.client import SegmentClient

    workspaces = set(glob.glob(os.path.join(tempfile.gettempdir(), "cmpf-serve-*")))
    http, grpc, metrics = free_ports(3)
    process = subprocess.Popen([sys.executable, "-m", "cmpf", "serve", "--artifacts", str(artifacts), "--http-port",
                                str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--no-resize"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = SegmentClient(f"localhost:{http}")
        deadline = time.monotonic() + 150
        while not client.is_ready() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.is_ready(), process.stderr.read() if process.poll() is not None else "not ready in 150 s"
        client.close()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-2000:]
    assert f"HTTP localhost:{http}" in out and "cmpf_segment" in out
    leftovers = subprocess.run(["pgrep", "-f", f"--http-port={http}"], capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"tritonserver still running: {leftovers}"
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "cmpf-serve-*"))) <= workspaces  # its own is gone
