"""BF16 by casts: the fp16 rewrite (same keep-list, same fp32 interface) with bfloat16 for float16.

bfloat16 keeps fp32's 8 exponent bits (7 mantissa bits to fp16's 10), so nothing overflows: the
weights are rounded from the fp32 originals (round to nearest even, ``ml_dtypes``), not from the
fp16 converter's values, which it clamps to +-1e4. Every ``Cast`` to float16 becomes a cast to
bfloat16, every float16 constant and type annotation bfloat16; the keep-list ops stay fp32 as in
``cmpf.precision.fp16``, and so do the ops whose ONNX schema at the graph's opset admits float but
not bfloat16 (``onnx_fp32_only``: Einsum, for one), so the file is valid ONNX. TensorRT (strongly typed) builds the casts as written. ONNX Runtime's CPU
provider has no bfloat16 kernels for most of these ops, so cmpf checks the file with OpenVINO
(``onnx`` frontend, bf16 kernels on AVX-512 BF16 / AMX CPUs).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from cmpf.precision import fp16


def onnx_fp32_only(model: onnx.ModelProto) -> tuple[str, ...]:
    """The default-domain op types of ``model`` whose schema (at its opset) takes float but not bfloat16."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    found = []
    for op in sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}):
        constraints = [c.allowed_type_strs for c in onnx.defs.get_schema(op, opset).type_constraints]
        if any("tensor(float)" in c and "tensor(bfloat16)" not in c for c in constraints):
            found.append(op)
    return tuple(found)


def to_bf16(model: onnx.ModelProto, keep: tuple[str, ...], keep_nodes: tuple[str, ...] = ()) -> onnx.ModelProto:
    """``model`` with bf16 weights and compute, fp32 interface, and ``keep`` op types / nodes (and the ops
    ONNX defines no bfloat16 for) in fp32; checked against the ONNX schemas."""
    originals = {t.name: t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    keep = tuple(keep) + tuple(op for op in onnx_fp32_only(model) if op not in keep)
    half = fp16.to_fp16(model, keep, keep_nodes)
    for init in half.graph.initializer:
        if init.data_type == TensorProto.FLOAT16:
            source = originals.get(init.name, init)  # the converter keeps initialiser names
            init.CopyFrom(_bf16_tensor(numpy_helper.to_array(source).astype(np.float32), init.name))
    for graph in _graphs(half.graph):
        for node in graph.node:
            _retype_node(node)
        for info in (*graph.value_info, *graph.input, *graph.output):
            if info.type.tensor_type.elem_type == TensorProto.FLOAT16:
                info.type.tensor_type.elem_type = TensorProto.BFLOAT16
    leftover = [n.name for g in _graphs(half.graph) for n in g.node if _has_fp16(n)]
    if leftover:
        raise ValueError(f"bf16 rewrite left float16 in nodes {leftover[:5]}")
    onnx.checker.check_model(half if half.ByteSize() < 2**31 - 2**20 else _without_weights(half), full_check=True)
    return half


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose initialisers hold no data (over 2 GB, the checker takes no proto; types and shapes stay)."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for init in light.graph.initializer:
        init.ClearField("raw_data")
        init.data_location = TensorProto.DEFAULT
    return light


def _bf16_tensor(values: np.ndarray, name: str) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.BFLOAT16, dims=values.shape)
    tensor.raw_data = values.astype(ml_dtypes.bfloat16).tobytes()  # little-endian, as ONNX stores raw data
    return tensor


def _retype_node(node: onnx.NodeProto) -> None:
    for attr in _fp16_attributes(node):
        if attr.type == onnx.AttributeProto.INT:
            attr.i = TensorProto.BFLOAT16
        else:
            attr.t.CopyFrom(_bf16_tensor(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))


def _has_fp16(node: onnx.NodeProto) -> bool:
    return any(True for _ in _fp16_attributes(node))


def _fp16_attributes(node: onnx.NodeProto):
    """``node``'s attributes that name or hold float16: a ``to`` / ``dtype`` type, or a constant tensor."""
    for attr in node.attribute:
        if (attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i == TensorProto.FLOAT16) \
                or (attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16):
            yield attr


def _graphs(graph: onnx.GraphProto):
    """``graph`` and its subgraphs (If / Loop / Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)
