"""``cmpf build --artifacts DIR [--precision P] [--graphs ...] [--shapes RANGES]... [--plugins ...]``.

Strongly typed TensorRT engines (``<graph>.<precision>.engine``) of an artifact directory's ONNX graphs,
added to its manifest; ``--route torch-tensorrt`` compiles the model's exported programs with
Torch-TensorRT instead (``.ts``).
"""

from __future__ import annotations

from cmpf.cli import common


def add(sub) -> None:
    p = sub.add_parser("build", help="build TensorRT engines from an artifact directory's ONNX graphs")
    p.add_argument("--artifacts", required=True, metavar="DIR", help="directory written by `cmpf export`")
    p.add_argument("--precision", metavar="P",
                   help="source ONNX precision: fp16, int8... for every graph, or GRAPH=P pairs (default: fp32); "
                        "the types come from that graph's casts and Q/DQ nodes")
    p.add_argument("--graphs", help="comma list of graphs (default: all)")
    p.add_argument("--shapes", action="append", metavar="RANGES",
                   help="one optimisation profile, e.g. 'height=320:800:1344,width=320:1088:1344,batch=1:1:4,"
                        "num_classes=1:150:1000' (unnamed dims keep their defaults); repeat for several profiles")
    p.add_argument("--timing-cache", metavar="FILE", help="persistent timing cache, read and updated")
    p.add_argument("--opt-level", type=int, default=3, metavar="N", help="builder optimisation level 0..5 (default 3)")
    p.add_argument("--workspace", type=float, default=4.0, metavar="GB", help="workspace memory limit (default 4)")
    p.add_argument("--plugins", help="cmpf plugins the graphs use (exported with `cmpf export --plugins`): "
                                     "masked_attention, mask_pooling, ms_deform_attn")
    p.add_argument("--route", choices=("tensorrt", "torch-tensorrt"), default="tensorrt",
                   help="tensorrt: ONNX → .engine (default); torch-tensorrt: the exported programs → .ts")
    common.add_device(p, default="cuda")
    p.set_defaults(func=main)


def main(args) -> int:
    from cmpf.engines.build import EngineConfig, build_engines

    cfg = EngineConfig(artifacts=args.artifacts, precision=args.precision, graphs=common.csv(args.graphs),
                       shapes=tuple(args.shapes or ()), timing_cache=args.timing_cache, opt_level=args.opt_level,
                       workspace_gb=args.workspace, plugins=common.csv(args.plugins) or (), route=args.route,
                       device=args.device)
    programs = _exported_programs(cfg) if cfg.route == "torch-tensorrt" else None
    print(f"wrote {build_engines(cfg, programs=programs)}")
    return 0


def _exported_programs(cfg):
    """graph → ``torch.export`` program of the directory's model (its recorded weights), for Torch-TensorRT.

    The glue between two packages that must not know each other: the engines never import the model.
    """
    from cmpf.export.program import example_inputs, export_program
    from cmpf.manifest import Manifest
    from cmpf.model.graphs import graph_module
    from cmpf.runtime.torch_runner import model_from_manifest

    manifest = Manifest.read(cfg.artifacts)
    model = model_from_manifest(manifest, cfg.device)

    def program(graph: str):
        spec = manifest.graphs[graph].spec
        return export_program(graph_module(model, graph), spec, example_inputs(spec, device=cfg.device))

    return program
