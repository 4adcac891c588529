"""cmpf's TensorRT plugins as ONNX custom-domain nodes: what ``cmpf export --plugins`` writes instead of decompositions.

Consumes a graph traced with the Triton kernels selected (``plugin_model_config``), whose program then
holds the kernels' ``torch.ops.cmpf.*`` ops; produces, through the ONNX exporter's
``custom_translation_table``, one ``cmpf::<op>`` node per call with ``plugin_namespace="cmpf"`` and
``aot=1``, so that TensorRT's ONNX parser instantiates the plugin of that name
(``cmpf.engines.plugins``) with its ahead-of-time implementation. The deformable attention's level sizes
become an int32 (L, 2) input computed in the graph from the feature-map shapes (AOT plugins keep no
attributes, and the sizes follow the image size). Masked attention without a mask is written as plain
ONNX ops. ONNX Runtime cannot run the plugin nodes: these files are for TensorRT.
"""

from __future__ import annotations

import dataclasses
import functools

from cmpf.config import ModelConfig
from cmpf.engines.plugins import PLUGIN_NAMESPACE, PLUGIN_OPS
from cmpf.errors import InputError

# the ModelConfig field that selects each kernel (the Triton path is what puts the op into the program)
IMPL_FIELDS = {"masked_attention": "attention_impl", "mask_pooling": "mask_pooling_impl",
               "ms_deform_attn": "deform_attn_impl"}
_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
_INPUTS = {  # the plugin contract: input names and types, in order (T: the float type of the call)
    "masked_attention": (("q", "T"), ("k", "T"), ("v", "T"), ("blocked", "tensor(bool)")),
    "mask_pooling": (("x", "T"), ("mask_logits", "T")),
    "ms_deform_attn": (("value", "T"), ("spatial_shapes", "tensor(int32)"), ("sampling_locations", "T"),
                       ("attention_weights", "T")),
}


def plugin_names(plugins) -> tuple[str, ...]:
    plugins = tuple(dict.fromkeys(plugins or ()))
    unknown = sorted(set(plugins) - set(PLUGIN_OPS))
    if unknown:
        raise InputError(f"--plugins: unknown plugins {unknown}; cmpf's plugins are {', '.join(PLUGIN_OPS)}")
    return plugins


def check_traceable(plugins) -> None:
    """Refuse, in a second, a plugin whose torch op the model cannot trace with dynamic sizes (before a long
    export fails): the deformable attention's dispatch must keep the level sizes symbolic."""
    if "ms_deform_attn" not in plugin_names(plugins):
        return
    import torch
    from torch.export import Dim

    from cmpf.kernels.ms_deform_attn import ms_deform_attn

    class Probe(torch.nn.Module):
        def forward(self, feature, value, locations, weights):
            return ms_deform_attn(value, [tuple(feature.shape[-2:])], locations, weights, impl="triton")

    args = (torch.zeros(1, 1, 4, 6), torch.zeros(1, 24, 1, 4), torch.zeros(1, 3, 1, 1, 2, 2),
            torch.zeros(1, 3, 1, 1, 2))
    dims = ({2: Dim("h", min=2), 3: Dim("w", min=2)}, {1: Dim("s", min=2)}, {}, {})
    try:
        torch.export.export(Probe(), args, dynamic_shapes=dims, strict=False)
    except Exception as e:  # noqa: BLE001 (torch reports the specialisation as one of several error types)
        raise InputError(f"--plugins ms_deform_attn: the deformable attention's Triton dispatch fixes the level sizes "
                         f"when traced ({type(e).__name__}), so the graph cannot keep dynamic image sizes; export "
                         f"without ms_deform_attn (cmpf.kernels.ms_deform_attn must keep torch.SymInt level sizes)"
                         ) from None


def plugin_model_config(cfg: ModelConfig, plugins) -> ModelConfig:
    """The config to trace with: the Triton path of each plugged kernel (an architecture-neutral choice)."""
    return dataclasses.replace(cfg, **{IMPL_FIELDS[p]: "triton" for p in plugin_names(plugins)})


@functools.lru_cache(maxsize=None)
def _op(name: str):
    """An onnxscript op of the ``cmpf`` domain, with the schema the exporter needs to record the node."""
    import onnx
    import onnxscript

    schema = onnx.defs.OpSchema(
        name, PLUGIN_NAMESPACE, 1, f"cmpf's TensorRT plugin {PLUGIN_NAMESPACE}::{name}",
        inputs=[onnx.defs.OpSchema.FormalParameter(n, t) for n, t in _INPUTS[name]],
        outputs=[onnx.defs.OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", _FLOATS, "the float type of the call")],
        attributes=[onnx.defs.OpSchema.Attribute("plugin_namespace", onnx.defs.OpSchema.AttrType.STRING),
                    onnx.defs.OpSchema.Attribute("aot", onnx.defs.OpSchema.AttrType.INT)])
    return onnxscript.values.Op(onnxscript.values.Opset(PLUGIN_NAMESPACE, 1), name, schema)


def _plugin(name: str, *inputs):
    return _op(name)(*inputs, plugin_namespace=PLUGIN_NAMESPACE, aot=1)


def translation_table(plugins) -> dict:
    """``custom_translation_table`` of ``torch.onnx.export``: the kernels' torch ops → plugin nodes."""
    import torch
    from onnxscript import opset20 as op

    from cmpf.kernels import mask_pooling, masked_attention, ms_deform_attn

    def masked_attention_node(q, k, v, blocked=None):
        if blocked is None:  # no mask: plain attention, which TensorRT fuses itself
            scale = op.CastLike(op.Sqrt(op.Cast(op.Shape(q, start=3), to=1)), q)
            scores = op.Div(op.MatMul(q, op.Transpose(k, perm=[0, 1, 3, 2])), scale)
            return op.MatMul(op.Softmax(scores, axis=-1), v)
        return _plugin("masked_attention", q, k, v, blocked)

    def mask_pooling_node(x, mask_logits):
        return _plugin("mask_pooling", x, mask_logits)

    def ms_deform_attn_node(value, spatial_shapes, sampling_locations, attention_weights):
        parts = [op.Constant(value_ints=[s]) if isinstance(s, int) else op.Reshape(s, op.Constant(value_ints=[1]))
                 for s in spatial_shapes]
        shapes = op.Reshape(op.Cast(op.Concat(*parts, axis=0), to=6), op.Constant(value_ints=[-1, 2]))  # 6: INT32
        return _plugin("ms_deform_attn", value, shapes, sampling_locations, attention_weights)

    nodes = {"masked_attention": (masked_attention, masked_attention_node),
             "mask_pooling": (mask_pooling, mask_pooling_node),
             "ms_deform_attn": (ms_deform_attn, ms_deform_attn_node)}
    table = {}
    for name in plugin_names(plugins):
        module, node = nodes[name]
        module.register_op()  # the torch op exists once registered (the kernels register lazily)
        table[getattr(torch.ops.cmpf, name).default] = node
    return table


def plugin_nodes(model) -> list[str]:
    """The plugin ops of an ``onnx.ModelProto``, in node order."""
    return [n.op_type for n in model.graph.node if n.domain == PLUGIN_NAMESPACE]
