"""``cmpf client IMAGE... [--url HOST:PORT] [--protocol http|grpc] [--vocab FILE | --classes L] --out DIR``."""

from __future__ import annotations

from cmpf.cli import common


def add(sub) -> None:
    p = sub.add_parser("client", help="segment images on a running `cmpf serve` and write what `cmpf run` writes",
                       description="Send images to the Triton model cmpf_segment and write the files `cmpf run` "
                                   "writes (semantic/, color/, overlay/, panoptic/, panoptic.json, instances.json).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--url", default="localhost:8000",
                   help="the server's HTTP (or, with --protocol grpc, gRPC) address (default: localhost:8000)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http",
                   help="transport to the server (default: http)")
    common.add_vocabulary(p, train=False, default=" (default: the server's, the export's)")
    p.add_argument("--out", default="out", help="output directory (default: out)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds to wait for each answer (default: 120)")
    p.set_defaults(func=main)


def main(args) -> int:
    from cmpf.serving.client import ClientConfig, client_run

    result = client_run(ClientConfig(images=tuple(args.images), out_dir=args.out, url=args.url,
                                     protocol=args.protocol, vocab=args.vocab, classes=args.classes,
                                     things=args.things, timeout_s=args.timeout))
    print(result.summary())
    return 0
