"""``cmpf serve --artifacts DIR [--backend B] [--http-port P] [--grpc-port P] [--max-batch N] [--instances N]``."""

from __future__ import annotations

from cmpf.cli import common

_SERVABLE = ("onnxruntime", "openvino", "aoti", "tensorrt")


def add(sub) -> None:
    p = sub.add_parser("serve", help="serve exported artifacts with Triton Inference Server (model cmpf_segment)",
                       description="Serve an artifact directory as the Triton model cmpf_segment: an encoded image "
                                   "or uint8 pixels plus an optional vocabulary in; the semantic map, panoptic "
                                   "segments and instances out. Dynamic batching, one text-embedding cache per "
                                   "vocabulary, /v2/health/ready, Prometheus metrics. Ctrl-C stops it.")
    p.add_argument("--artifacts", required=True, metavar="DIR", help="directory written by `cmpf export`")
    p.add_argument("--backend", choices=_SERVABLE, default="onnxruntime",
                   help="runner of the graphs (default: onnxruntime)")
    p.add_argument("--precision", metavar="P", help="files of this precision, as for `cmpf run` (default: fp32)")
    p.add_argument("--no-resize", dest="resize", action="store_false", default=None,
                   help="skip the official 800/1333 shortest-edge resize, as `cmpf run --no-resize` (default: resize)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (default: 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: 8002)")
    p.add_argument("--max-batch", type=common.positive_int, default=4, metavar="N",
                   help="requests the dynamic batcher gathers into one pipeline call (default: 4)")
    p.add_argument("--instances", type=common.positive_int, default=1, metavar="N",
                   help="model instances, each a process with its own runners (default: 1)")
    p.add_argument("--max-image-bytes", type=common.positive_int, default=32 << 20, metavar="N",
                   help="refuse larger encoded images with HTTP 400 (default: 33554432, 32 MiB)")
    common.add_max_pixels(p)
    common.add_device(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from cmpf.serving.repository import ServeConfig
    from cmpf.serving.server import serve

    cfg = ServeConfig(artifacts=args.artifacts, backend=args.backend, precision=args.precision, resize=args.resize,
                      http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                      max_batch=args.max_batch, instances=args.instances, max_image_bytes=args.max_image_bytes,
                      device=args.device, **({"max_pixels": args.max_pixels} if args.max_pixels else {}))
    return serve(cfg, announce=lambda line: print(line, flush=True))
