"""FP16 by casts: every float tensor in half precision but the ops of a keep-list, which stay fp32.

ONNX Runtime's ``onnxruntime.transformers.float16`` (the maintained fork of onnxconverter-common's
converter, which fails on these graphs: Cast/ConstantOfShape typing) does the rewrite: initialisers
to fp16, Cast nodes at each fp16/fp32 boundary, graph inputs and outputs kept fp32 so the spec's
interface is unchanged. Two fixes around it: graph outputs that other nodes also read get an
``Identity`` first, and node names are made unique after (it names casts by tensor). The keep-list (``KEEP_OPS``) holds what loses most in half precision: normalisations
(their variance), softmax, sigmoid, exponentials and logarithms, square roots and the reductions
of the L2 normalisations; ``benchmarks/results/precision_keep_lists.json`` has the per-graph
measurement that chose it (``benchmarks/precision_keep_lists.py``).
"""

from __future__ import annotations

import onnx

NORMS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "BatchNormalization")
SOFTMAX = ("Softmax", "LogSoftmax")
TAIL = ("Sigmoid", "Exp", "Log", "Sqrt", "Reciprocal", "Pow", "ReduceL2", "ReduceSum", "ReduceMean",
        "ReduceSumSquare")
# the keep-lists a measurement compares (benchmarks/precision_keep_lists.py)
CANDIDATE_KEEP_LISTS = {"none": (), "norms": NORMS, "norms+softmax": NORMS + SOFTMAX,
                        "norms+softmax+tail": NORMS + SOFTMAX + TAIL}
DEFAULT_KEEP = "norms+softmax+tail"
# per graph: the smallest measured keep-list within the fp16 tolerance row, or the default
KEEP_OPS: dict[str, tuple[str, ...]] = {}


def keep_ops(graph: str) -> tuple[str, ...]:
    return KEEP_OPS.get(graph, CANDIDATE_KEEP_LISTS[DEFAULT_KEEP])


def to_fp16(model: onnx.ModelProto, keep: tuple[str, ...], keep_nodes: tuple[str, ...] = ()) -> onnx.ModelProto:
    """``model`` with fp16 weights and compute, fp32 interface, and ``keep`` op types / nodes in fp32."""
    import warnings

    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = _split_consumed_outputs(model)
    del model.graph.value_info[:]  # stale fp32 annotations; shape inference redoes them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one line per weight clamped to the fp16 range (min_positive_val)
        half = convert_float_to_float16(model, keep_io_types=True,
                                        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(keep),
                                        node_block_list=list(keep_nodes), disable_shape_infer=False)
    _dedupe(half)
    _sort_topologically(half.graph)
    return half


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Order the nodes so each comes after its inputs' producers (the converter appends its casts at the
    end; ONNX requires the order, ``onnx.checker`` checks it), keeping the original order among ready nodes."""
    import heapq

    produced_by = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    waiting = [{produced_by[t] for t in _reads(n) if t in produced_by} for n in graph.node]
    readers: dict[int, list[int]] = {}
    for i, deps in enumerate(waiting):
        for d in deps:
            readers.setdefault(d, []).append(i)
    ready = [i for i, deps in enumerate(waiting) if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for r in readers.get(i, ()):
            waiting[r].discard(i)
            if not waiting[r]:
                heapq.heappush(ready, r)
    if len(order) != len(graph.node):
        raise ValueError("fp16 conversion left a cycle in the graph")
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def _reads(node: onnx.NodeProto) -> set[str]:
    """The tensors ``node`` reads, its subgraphs' outer-scope reads included."""
    names = {i for i in node.input if i}
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(attr.graphs):
            for inner in sub.node:
                names |= _reads(inner)
    return names


def _dedupe(model: onnx.ModelProto) -> None:
    """Drop repeated identical nodes (the converter adds one cast per blocked reader of a tensor, all with
    the same output name) and make the remaining node names unique."""
    producers: dict[str, onnx.NodeProto] = {}
    kept = []
    for node in model.graph.node:
        first = producers.get(node.output[0]) if node.output else None
        if first is not None:
            if (first.op_type, list(first.input), list(first.attribute)) != (node.op_type, list(node.input),
                                                                             list(node.attribute)):
                raise ValueError(f"fp16 conversion wrote tensor {node.output[0]} twice, differently")
            continue  # an identical cast already writes this tensor
        producers.update({o: node for o in node.output})
        kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    seen: dict[str, int] = {}
    for node in model.graph.node:
        count = seen.get(node.name, 0)
        seen[node.name] = count + 1
        if count:
            node.name = f"{node.name}__{count}"


def _split_consumed_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A graph output that other nodes also read (the CLIP ``res2``..``res5`` features) becomes an internal
    tensor plus an ``Identity`` to the output: the converter casts the output back to fp32, and the
    readers must keep the fp16 tensor."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy
    outputs = {o.name for o in model.graph.output}
    read = {i for n in model.graph.node for i in n.input}
    for name in sorted(outputs & read):
        internal = f"{name}__fp16_internal"
        for node in model.graph.node:
            node.output[:] = [internal if o == name else o for o in node.output]
            node.input[:] = [internal if i == name else i for i in node.input]
        model.graph.node.append(onnx.helper.make_node("Identity", [internal], [name], name=f"{name}__output"))
    return model


def kept_nodes(model: onnx.ModelProto, keep: tuple[str, ...]) -> list[str]:
    """The names of the nodes that stay fp32 (the keep-list's op types), for the manifest."""
    return [n.name for n in model.graph.node if n.op_type in keep]
