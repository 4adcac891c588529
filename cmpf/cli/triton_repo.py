"""``cmpf triton-repo --artifacts DIR --out REPO [--graph-backend onnxruntime|tensorrt|python] [--max-batch N]``."""

from __future__ import annotations

from cmpf.cli import common


def add(sub) -> None:
    p = sub.add_parser("triton-repo", help="write a Triton Inference Server model repository of an artifact directory",
                       description="Write a model repository for a standalone Triton server: one model per graph "
                                   "(config.pbtxt from the graph specs), and cmpf_segment, the pre/post-processing "
                                   "as a Python-backend model calling the graph models through BLS.")
    p.add_argument("--artifacts", required=True, metavar="DIR", help="directory written by `cmpf export`")
    p.add_argument("--out", required=True, metavar="REPO", help="the repository to write (new or empty)")
    p.add_argument("--graph-backend", choices=("onnxruntime", "tensorrt", "python"), default="onnxruntime",
                   help="Triton backend of the graph models: onnxruntime (the ONNX files), tensorrt (the engines of "
                        "`cmpf build`) or python (cmpf's --runner on the files) (default: onnxruntime)")
    p.add_argument("--runner", choices=("onnxruntime", "openvino", "aoti"), default="onnxruntime",
                   help="with --graph-backend python: the runner of the graph models (default: onnxruntime)")
    p.add_argument("--max-batch", type=common.positive_int, default=4, metavar="N",
                   help="images per batch of cmpf_segment and of the graphs with a batch dimension (default: 4)")
    p.add_argument("--instances", type=common.positive_int, default=1, metavar="N",
                   help="instances of every model (default: 1)")
    common.add_device(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from pathlib import Path

    from cmpf.serving.triton_repo import RepoConfig, write_triton_repo

    files = write_triton_repo(RepoConfig(args.artifacts, args.out, args.graph_backend, args.runner,
                                         max_batch=args.max_batch, instances=args.instances, device=args.device))
    root = Path(args.out).resolve()
    models = sorted({Path(f).resolve().relative_to(root).parts[0] for f in files})
    print(f"wrote {len(files)} files in {args.out}/: models {', '.join(models)}; serve it with "
          f"`tritonserver --model-repository {args.out}` (cmpf installed in its Python environment)")
    return 0
