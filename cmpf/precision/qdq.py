"""INT8 by explicit Q/DQ: ONNX Runtime's static quantiser in QDQ format, symmetric throughout.

Weights per output channel, activations per tensor, zero point 0 (``ActivationSymmetric`` and
``WeightSymmetric``): the form TensorRT's strongly typed networks build as they are. Only the
weight ops (``QUANT_OPS``: Conv, MatMul, Gemm) get Q/DQ on their inputs, so residual adds, norms
and softmax run in fp32 between them; the output heads (``output_heads``: the last weight op on
every path to a graph output) are excluded by default. Calibration methods are ONNX Runtime's
MinMax, Entropy and Percentile over the inputs of ``cmpf.precision.calibration``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

QUANT_OPS = ("Conv", "MatMul", "Gemm")
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "minmax"  # lowest worst-graph error of the three (benchmarks/results/precision_calibration_tiny.json)
_PASS_THROUGH = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "Concat", "Slice",
                 "Gather", "Split", "Expand", "Add", "Mul", "Div", "Sub", "Where", "Sigmoid", "Softmax", "Relu",
                 "Gelu", "Erf", "LayerNormalization", "ReduceL2", "ReduceMean", "ReduceSum", "Einsum"}


def weight_ops(model: onnx.ModelProto) -> list[str]:
    """The Conv / MatMul / Gemm nodes with a constant (initialiser) weight: the ones quantised. Products of
    two activations (attention's Q·Kᵀ and A·V) stay fp32 (measured on the tiny decoder: pred_logits
    0.33 → 0.28 L2-relative error)."""
    constants = _constants(model)
    return [n.name for n in model.graph.node if n.op_type in QUANT_OPS and any(i in constants for i in n.input[1:2])]


def _constants(model: onnx.ModelProto) -> set[str]:
    """Names of the tensors that are initialisers or ``Constant`` outputs."""
    return {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def calibrated_tensors(model: onnx.ModelProto, nodes: Iterable[str]) -> set[str]:
    """The activation inputs and the outputs of ``nodes`` (not initialisers or constants): the tensors ONNX
    Runtime's static Q/DQ pass needs a range for."""
    constants = _constants(model)
    wanted = set(nodes)
    return {t for n in model.graph.node if n.name in wanted for t in (*n.input, *n.output) if t and t not in constants}


@contextlib.contextmanager
def _calibrating_only(tensors: set[str]) -> Iterator[None]:
    """ONNX Runtime's calibrators record the inputs and outputs of every node of the quantised op types, so
    attention's activation×activation MatMuls too: SAM ViT-B's global-attention logits at 1024² are 805 MB a
    tensor, and keeping them all ran a 24 GB machine out of memory. Only ``tensors`` are recorded here."""
    from onnxruntime.quantization.calibrate import CalibraterBase

    select = CalibraterBase.select_tensors_to_calibrate

    def only(self, model):
        found, value_infos = select(self, model)
        return found & tensors, value_infos

    CalibraterBase.select_tensors_to_calibrate = only
    try:
        yield
    finally:
        CalibraterBase.select_tensors_to_calibrate = select


def output_heads(model: onnx.ModelProto) -> list[str]:
    """Names of the weight ops nearest each graph output (walking back through shape/element-wise ops)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    heads, seen = [], set()
    stack = [o.name for o in model.graph.output]
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in QUANT_OPS:
            heads.append(node.name)
        elif node.op_type in _PASS_THROUGH:
            stack.extend(node.input)
    return sorted(set(heads))


class FeedReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over captured feeds (numpy dicts).

    ``set_range`` lets the quantiser collect one feed at a time (``CalibStridedMinMax`` = 1, which
    every calibrator honours): the feeds of images of other sizes have other shapes, which its
    histogram collectors cannot stack in one batch.
    """

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]):
        self._feeds = list(feeds)
        self.set_range(0, len(self._feeds))

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])

    def get_next(self):
        return next(self._it, None)


def quantize(src: Path, dst: Path, feeds: Iterable[Mapping[str, np.ndarray]], precision: str = "int8",
             method: str = DEFAULT_METHOD, exclude: Sequence[str] = (), external_data: bool = False,
             reduce_range: bool = False) -> dict:
    """Write the Q/DQ graph of ``src`` to ``dst``; returns the settings for the manifest's recipe.

    ``reduce_range``: 7-bit weights (ONNX Runtime's option of that name): on x86 CPUs without VNNI, ONNX
    Runtime's u8×s8 products sum in saturating int16 and full-range weights can overflow them
    (``benchmarks/results/int8_saturation_*``); 7-bit ones cannot, at one bit less of weight precision.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    qtype = {"int8": QuantType.QInt8}[precision]
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    # QuantizeBias off: biases stay float (an INT32 DequantizeLinear is outside TensorRT's documented types)
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibTensorRangeSymmetric": True,
             "CalibStridedMinMax": 1, "QuantizeBias": False}
    if method == "percentile":
        extra["CalibPercentile"] = 99.99
    model = onnx.load(str(src), load_external_data=False)
    nodes = sorted(set(weight_ops(model)) - set(exclude))
    with _calibrating_only(calibrated_tensors(model, nodes)):
        quantize_static(str(src), str(dst), FeedReader(list(feeds)), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANT_OPS), per_channel=True, activation_type=qtype,
                        weight_type=qtype, nodes_to_quantize=nodes, nodes_to_exclude=list(exclude),
                        calibrate_method=calibrate, use_external_data_format=external_data, reduce_range=reduce_range,
                        extra_options=extra)
    return {"scheme": "symmetric Q/DQ, zero point 0", "weights": "per-channel", "weight_bits": 7 if reduce_range else 8,
            "activations": "per-tensor", "quantized_nodes": len(nodes), "calibration_method": method,
            "excluded_nodes": sorted(exclude)}


def qdq_facts(model: onnx.ModelProto) -> dict:
    """Counts a reader (and the tests) check: Q/DQ nodes, non-zero zero points, per-channel scales."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    nonzero = sum(1 for n in q + dq if len(n.input) > 2 and n.input[2] in inits and np.any(inits[n.input[2]] != 0))
    per_channel = sum(1 for n in dq if n.input[1] in inits and inits[n.input[1]].size > 1)
    return {"quantize_linear": len(q), "dequantize_linear": len(dq), "nonzero_zero_points": nonzero,
            "per_channel_scales": per_channel}
