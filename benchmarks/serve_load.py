"""Load on ``cmpf serve``: N concurrent clients x M requests against a real Triton server on localhost.

    python benchmarks/serve_load.py /tmp/cmpf-exports/tiny-onnx-all --clients 4 --requests 25

Starts the server (``cmpf.serving.TritonServer``, free ports, stopped at the end), warms every
client up (``--warmup`` requests each), then lets each client thread send its M requests (encoded PNGs of one
size, so the dynamic batcher can gather them, and one vocabulary, so the text cache answers) one
after another, bounded by ``--time-limit``. Reports latency p50/p90/p99, throughput, the errors
(a load test passes with none) and the resident memory of the server's processes (tritonserver and
its backend stubs) after the warm-up, every 2 s of the load and after it, and writes
``results/serve_load_<model>.json`` with the machine it ran on.

Not ``perf_analyzer``: the ``perf-analyzer`` package on PyPI (0.1.0, what ``tritonclient[all]``
pulls in) is an empty placeholder without the binary, which ships in Triton's SDK container only.
"""

from __future__ import annotations

import argparse
import io
import os
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cmpf.bench.environment import environment
from cmpf.io import write_json
from cmpf.manifest import Manifest
from cmpf.serving.client import SegmentClient
from cmpf.serving.repository import ServeConfig
from cmpf.serving.server import TritonServer, free_ports
from cmpf.vocabulary import parse_class_list

RESULTS = Path(__file__).parent / "results"
CLASSES = "cat;dog,puppy;sky,heaven;grass"


def png_images(count: int, h: int, w: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:h, :w]
    files = []
    for i in range(count):
        pixels = (np.stack([x * (i + 1), y * 3, x + y], -1) % 256 + rng.integers(0, 40, (h, w, 3))).clip(0, 255)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def group_rss_mib(pgid: int) -> float:
    """Resident memory of every process in the server's process group (the server and its stubs)."""
    total_kib = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except (OSError, ProcessLookupError):
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return round(total_kib / 1024, 1)


def client_thread(url: str, images: list[bytes], requests: int, deadline: float, latencies: list, errors: list):
    client = SegmentClient(url)
    vocabulary = parse_class_list(CLASSES)
    try:
        for i in range(requests):
            if time.monotonic() > deadline:
                errors.append("time limit reached before this client's last request")
                return
            tic = time.perf_counter()
            try:
                client.segment(images[i % len(images)], vocabulary)
            except Exception as e:  # noqa: BLE001 (counted and reported: a load test passes with none)
                errors.append(f"{type(e).__name__}: {e}")
                continue
            latencies.append(time.perf_counter() - tic)
    finally:
        client.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("artifacts", help="an artifact directory (cmpf export)")
    p.add_argument("--backend", default="onnxruntime", help="(default: onnxruntime)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default: 4)")
    p.add_argument("--requests", type=int, default=25, help="requests per client (default: 25)")
    p.add_argument("--warmup", type=int, default=3, help="requests per client before the timing (default: 3)")
    p.add_argument("--max-batch", type=int, default=4, help="the server's dynamic batch (default: 4)")
    p.add_argument("--instances", type=int, default=1, help="model instances (default: 1)")
    p.add_argument("--size", default="240x320", help="image H x W (default: 240x320)")
    p.add_argument("--resize", action="store_true", help="the official 800/1333 resize (default: off, native size)")
    p.add_argument("--time-limit", type=float, default=600, help="seconds for the whole load (default: 600)")
    p.add_argument("--out", help="report path (default: results/serve_load_<model>.json)")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    model = Manifest.read(Path(args.artifacts)).model.name
    http, grpc, metrics = free_ports(3)
    cfg = ServeConfig(args.artifacts, args.backend, http_port=http, grpc_port=grpc, metrics_port=metrics,
                      max_batch=args.max_batch, instances=args.instances, resize=None if args.resize else False)
    images = png_images(8, h, w)
    machine = environment()  # the load average before the server starts
    with TritonServer(cfg) as server:
        warm: list = []
        warm_errors: list = []
        threads = [threading.Thread(target=client_thread, args=(server.http_url, images, args.warmup,
                                                                time.monotonic() + 300, warm, warm_errors))
                   for _ in range(args.clients)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        rss_before = group_rss_mib(server.process.pid)
        latencies: list = []
        errors: list = []
        deadline = time.monotonic() + args.time_limit
        threads = [threading.Thread(target=client_thread, args=(server.http_url, images, args.requests, deadline,
                                                                latencies, errors)) for _ in range(args.clients)]
        series: list = []  # (seconds into the load, RSS MiB) every 2 s: flat, or growing?
        tic = time.perf_counter()
        [t.start() for t in threads]
        while any(t.is_alive() for t in threads):
            series.append((round(time.perf_counter() - tic, 1), group_rss_mib(server.process.pid)))
            threads[0].join(timeout=2.0) if threads[0].is_alive() else time.sleep(0.5)
        wall = time.perf_counter() - tic
        rss_after = group_rss_mib(server.process.pid)
    ms = np.asarray(latencies) * 1000
    report = {
        "schema": "cmpf.serve_load/1", "model": model, "backend": args.backend, "clients": args.clients,
        "requests_per_client": args.requests, "max_batch": args.max_batch, "instances": args.instances,
        "image_hw": [h, w], "resize": args.resize, "requests_ok": len(latencies),
        "errors": len(errors) + len(warm_errors),
        "error_messages": sorted(set(errors + warm_errors))[:10], "wall_s": round(wall, 2),
        "throughput_rps": round(len(latencies) / wall, 2),
        "latency_ms": {q: round(float(np.percentile(ms, v)), 1) for q, v in (("p50", 50), ("p90", 90), ("p99", 99))}
        | {"mean": round(float(ms.mean()), 1), "max": round(float(ms.max()), 1)} if len(ms) else {},
        "server_rss_mib": {"after_warmup": rss_before, "after_load": rss_after,
                           "growth": round(rss_after - rss_before, 1),
                           "second_half_growth": round(rss_after - series[len(series) // 2][1], 1) if series else None,
                           "every_2s": series},
        "machine": machine,
    }
    out = Path(args.out) if args.out else RESULTS / f"serve_load_{model}.json"
    write_json(out, report)
    print(f"{report['requests_ok']} requests, {report['errors']} errors, {report['throughput_rps']} req/s, "
          f"latency {report['latency_ms']}, server RSS {report['server_rss_mib']}; wrote {out}")


if __name__ == "__main__":
    main()
