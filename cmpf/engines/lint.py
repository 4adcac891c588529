"""TensorRT readiness lint: ONNX file(s) → one finding per problem TensorRT's ONNX parser would meet.

Consumes an ONNX file, or an artifact directory (every ONNX variant of every graph, hashes checked),
and the documented operator support of TensorRT's ONNX parser for 10.x and 11.x
(``trt_onnx_ops.json``: the support matrix with its source and version); produces ``Finding``s, each
one line naming the file, the node, the problem and the fix. Checked: every node against the table
(unsupported ops, data types and attribute values), custom-domain nodes against cmpf's plugins,
non-zero Q/DQ zero points, fp64 tensors, dynamic input dims no optimisation profile covers, the opset
range, and models over protobuf's 2 GB limit without external data. Runs on CPU with the ``onnx``
package alone; TensorRT is not needed.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from cmpf.engines.plugins import PLUGIN_NAMESPACE, PLUGIN_OPS
from cmpf.engines.profiles import Profile, profiles_from
from cmpf.errors import InputError

TABLE_PATH = Path(__file__).with_name("trt_onnx_ops.json")
VERSIONS = ("10", "11")
PROTOBUF_LIMIT = 2 * 1024 ** 3  # one protobuf message (an ONNX file without external data) stays below 2 GB
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Finding:
    severity: str  # "error": the parser or the build will fail; "warning": it builds, with a caveat
    file: str
    node: str  # node name, or the graph input / tensor the finding is about
    op: str
    problem: str
    fix: str
    versions: tuple[str, ...] = VERSIONS  # the TensorRT majors it applies to

    def __str__(self) -> str:
        where = f"{self.node} ({self.op})" if self.op else self.node
        trt = "/".join(f"{v}.x" for v in self.versions)
        return f"{self.file}: {where}: {self.severity} [TensorRT {trt}]: {self.problem}; {self.fix}"


@dataclass(frozen=True)
class OpTable:
    """The documented ONNX support of one TensorRT major version."""

    major: str
    tensorrt: str  # the release the table describes
    sources: tuple[str, ...]
    opset: tuple[int, int]
    operators: dict
    rules: dict
    known_issues: tuple[dict, ...]
    type_names: dict


@functools.lru_cache(maxsize=None)
def load_tables(path: str | Path = TABLE_PATH) -> dict[str, OpTable]:
    """The tables of ``trt_onnx_ops.json``; a table with a ``base`` is that table plus its ``changes``."""
    data = json.loads(Path(path).read_text())
    tables: dict[str, OpTable] = {}
    for major, t in data["tables"].items():
        base = tables.get(t.get("base", ""))
        operators = {**(base.operators if base else {}), **t.get("operators", {}), **t.get("changes", {})}
        rules = {**(base.rules if base else {})}
        for op, rule in t.get("rules", {}).items():
            rules[op] = {**rules.get(op, {}), **rule}
        sources = tuple(([t["source"]] if "source" in t else []) + t.get("sources", [])
                        + (list(base.sources) if base else []))
        tables[major] = OpTable(major, t["tensorrt"], sources, tuple(t["opset"]), operators, rules,
                                tuple(t.get("known_issues", ())), data["type_names"])
    return tables


# -- one model ---------------------------------------------------------------------------------------
def lint_model(path: str | Path, *, profiles: Optional[Sequence[Profile]] = None,
               versions: Sequence[str] = VERSIONS, size_limit: int = PROTOBUF_LIMIT,
               label: Optional[str] = None) -> list[Finding]:
    """Findings for one ONNX file (errors first).

    Args:
        profiles: the optimisation profiles ``cmpf build`` would use (default: ``profiles_from()``).
        size_limit: bytes above which a model must keep its weights in external data (protobuf's 2 GB;
            the tests pass a small value).
        label: the file name printed in findings (default: the path as given).
    """
    import onnx  # noqa: PLC0415 (optional dependency: cmpf[onnx])

    path = Path(path)
    name = label or str(path)
    tables = load_tables()
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    if path.stat().st_size > size_limit:  # inline weights: protobuf cannot even parse it
        return [Finding("error", name, "<model>", "", f"the file is {path.stat().st_size / 2 ** 30:.2f} GB in one "
                        f"protobuf message, over the 2 GB limit TensorRT's parser can read",
                        "re-export with `cmpf export --external-data` (weights in <file>.data)")]
    model = onnx.load(str(path), load_external_data=False)
    findings = _external_data_findings(model, path, name)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # noqa: BLE001 (a lint reports what it can; the finding says why it is partial)
        inferred = model
        findings.append(Finding("warning", name, "<model>", "", f"ONNX shape inference failed ({type(e).__name__}: "
                                f"{' '.join(str(e).split())[:200]}), so data types are checked only where declared",
                                "run `python -m onnx.checker` on the file"))
    values, consts = _value_infos(inferred), _constants(inferred.graph)
    findings += _fp64_findings(inferred.graph, values, name) + _profile_findings(inferred.graph, name, profiles)
    raw = [(major, f) for f in findings for major in versions]
    nodes = list(_walk(inferred.graph))
    for major in versions:
        table = tables[major]
        raw += [(major, f) for f in _opset_findings(model, name, table)]
        raw += [(major, f) for where, node in nodes for f in _node_findings(node, where, values, consts, table, name)]
    return _merge(raw)


def _merge(raw: list[tuple[str, Finding]]) -> list[Finding]:
    """One finding per (node, problem), listing the TensorRT majors it applies to; errors first."""
    merged: dict[tuple, list[str]] = {}
    for major, f in raw:
        merged.setdefault((f.severity, f.file, f.node, f.op, f.problem, f.fix), []).append(major)
    out = [Finding(*k, versions=tuple(dict.fromkeys(v))) for k, v in merged.items()]
    return sorted(out, key=lambda f: f.severity != "error")


# -- model-level checks ---------------------------------------------------------------------------------
def _opset_findings(model, name: str, table: OpTable) -> list[Finding]:
    lo, hi = table.opset
    version = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    if version is None or lo <= version <= hi:
        return []
    target = min(max(version, lo), hi)
    return [Finding("error", name, "<model>", "", f"ONNX opset {version} is outside TensorRT {table.major}.x's "
                    f"{lo}..{hi} ({table.tensorrt})", f"re-export with `cmpf export --opset {target}`")]


def _external_data_findings(model, path: Path, name: str) -> list[Finding]:
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    missing = sorted({ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)
                      and not (path.parent / ExternalDataInfo(t).location).is_file()})
    return [Finding("error", name, "<model>", "", f"external data file {m} is missing beside the model",
                    "keep the .data file next to the .onnx file (TensorRT's parse_from_file reads it from there)")
            for m in missing]


def _fp64_findings(graph, values: dict, name: str) -> list[Finding]:
    import onnx

    double = onnx.TensorProto.DOUBLE
    names = sorted(n for n, (elem, _) in values.items() if elem == double)
    return [Finding("error", name, n, "", "fp64 tensor: TensorRT casts DOUBLE down to FLOAT, clamping to +-FLT_MAX",
                    "keep the graph in fp32/fp16 (cast before export; check the Cast nodes' `to`)") for n in names]


def _profile_findings(graph, name: str, profiles: Optional[Sequence[Profile]]) -> list[Finding]:
    profiles = tuple(profiles) if profiles is not None else profiles_from()
    inits = {t.name for t in graph.initializer}
    out = []
    for value in graph.input:
        if value.name in inits or not value.type.HasField("tensor_type"):
            continue
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            label = dim.dim_param or None
            if label is None:
                out.append(Finding("error", name, value.name, "input", f"dim {i} is dynamic and unnamed, so no "
                                   f"optimisation profile can give it a range", "export it with a cmpf.spec dim name "
                                   "(batch, height, width, num_classes...) or a static size"))
            elif not any(p.covers(label) for p in profiles):
                out.append(Finding("error", name, value.name, "input", f"dim {i} {label!r} is dynamic and no "
                                   f"optimisation profile covers it", "name it after a cmpf.spec dim (give its range "
                                   "with --shapes NAME=MIN:OPT:MAX) or make it static"))
    return out


# -- node-level checks ---------------------------------------------------------------------------------
def _node_findings(node, where: str, values: dict, consts: dict, table: OpTable, name: str) -> list[Finding]:
    if node.domain not in _DEFAULT_DOMAINS:
        return _custom_node_findings(node, where, name)
    op = node.op_type
    entry = table.operators.get(op)
    err = lambda problem, fix: Finding("error", name, where, op, problem, fix)  # noqa: E731
    if entry is None:
        return [err("not in TensorRT's documented ONNX operator table",
                    "replace it with supported ops or implement a TensorRT plugin for it")]
    if not entry["supported"]:
        return [err(f"TensorRT's ONNX parser does not support {op}",
                    entry.get("restrictions") or "replace it with supported ops or implement a TensorRT plugin")]
    rule = table.rules.get(op, {})
    out = []
    dtype = _type_name(_type_of(node, rule, values), table)
    if dtype and entry.get("types") and dtype not in entry["types"]:
        out.append(err(f"{op} on {dtype} is not supported (supported: {', '.join(entry['types'])})",
                       "cast to a supported type before it or export in another precision"))
    out += [err(p, f) for p, f in _rule_problems(node, rule, values, consts)]
    for issue in table.known_issues:
        if issue["op"] == op:
            out.append(Finding("warning", name, where, op, f"{issue['message']} (TensorRT {issue['tensorrt']})",
                               issue["fix"]))
    return out


def _rule_problems(node, rule: dict, values: dict, consts: dict) -> Iterable[tuple[str, str]]:
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    decoded = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    for attr, allowed in rule.get("allowed", {}).items():
        if attr in decoded and decoded[attr] not in allowed:
            yield f"{attr}={decoded[attr]!r} is not supported", f"use one of {', '.join(map(repr, allowed))}"
    for attr, wanted in rule.get("equals", {}).items():
        if attr in decoded and decoded[attr] != wanted:
            yield f"{attr}={decoded[attr]!r} is not supported", f"TensorRT needs {attr}={wanted!r}"
    for attr in rule.get("all_ones", ()):
        if attr in decoded and any(v != 1 for v in decoded[attr]):
            yield f"{attr}={list(decoded[attr])} is not supported", f"TensorRT needs {attr} empty or all ones"
    for attr in rule.get("forbidden_attributes", ()):
        if attr in decoded:
            yield f"attribute {attr} is not supported", "give the value as a dense `value` tensor"
    if "input_rank" in rule and node.input:
        rank = values.get(node.input[0], (None, None))[1]
        if rank is not None and rank not in rule["input_rank"]:
            ranks = " or ".join(map(str, rule["input_rank"]))
            yield f"input rank {rank} is not supported", f"TensorRT needs rank {ranks}"
    if "max_outputs" in rule:
        used = sum(1 for o in node.output if o)
        if used > rule["max_outputs"]:
            yield (f"{used} outputs used, TensorRT supports the first {rule['max_outputs']} only",
                   "drop the extra outputs from the export")
    index = rule.get("zero_point_input")
    if index is not None and len(node.input) > index and node.input[index]:
        zp = consts.get(node.input[index])
        if zp is None:
            yield "the zero point is not a constant", "give a constant, all-zero zero point (symmetric quantization)"
        elif zp.any():
            yield (f"non-zero zero point {node.input[index]} (values {sorted(set(zp.flatten().tolist()))[:4]})",
                   "TensorRT supports symmetric quantization only: recalibrate with zero points of 0")


def _custom_node_findings(node, where: str, name: str) -> list[Finding]:
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    namespace = attrs.get("plugin_namespace", b"")
    namespace = namespace.decode() if isinstance(namespace, bytes) else namespace
    op = f"{node.domain}::{node.op_type}"
    if namespace != PLUGIN_NAMESPACE or node.op_type not in PLUGIN_OPS:
        return [Finding("error", name, where, op, f"custom op with no TensorRT importer; TensorRT looks for a plugin "
                        f"named {node.op_type!r} in namespace {namespace!r}", "export without it, or register a "
                        f"plugin of that name before parsing (cmpf's plugins: {', '.join(PLUGIN_OPS)})")]
    if len(node.input) != PLUGIN_OPS[node.op_type]:
        return [Finding("error", name, where, op, f"{len(node.input)} inputs, cmpf's {node.op_type} plugin takes "
                        f"{PLUGIN_OPS[node.op_type]}", "re-export with `cmpf export --plugins`")]
    if not attrs.get("aot"):
        return [Finding("warning", name, where, op, "plugin node without aot=1: the engine would call back into "
                        "Python (JIT) to run it", "re-export with `cmpf export --plugins` (AOT nodes)")]
    return []


# -- graph facts -----------------------------------------------------------------------------------------
def _walk(graph, prefix: str = ""):
    """(name, node) of every node, subgraphs (If / Loop / Scan bodies) included."""
    import onnx

    for i, node in enumerate(graph.node):
        where = prefix + (node.name or f"{node.op_type}#{i}")
        yield where, node
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _walk(a.g, where + "/")
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _walk(g, where + "/")


def _value_infos(model) -> dict[str, tuple[int, Optional[int]]]:
    """{tensor name: (elem type, rank or None)} of every typed tensor (inputs, outputs, value_info, weights)."""
    out: dict[str, tuple[int, Optional[int]]] = {}

    def add_graph(graph):
        for v in list(graph.input) + list(graph.output) + list(graph.value_info):
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                tt = v.type.tensor_type
                out[v.name] = (tt.elem_type, len(tt.shape.dim) if tt.HasField("shape") else None)
        for t in graph.initializer:
            out[t.name] = (t.data_type, len(t.dims))
        for _, node in _walk(graph):
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
                for a in node.attribute:
                    if a.name == "value":
                        out[node.output[0]] = (a.t.data_type, len(a.t.dims))

    add_graph(model.graph)
    return out


def _constants(graph) -> dict:
    """{name: numpy array} of the small constants (initializers stored inline, Constant nodes)."""
    from onnx import numpy_helper
    from onnx.external_data_helper import uses_external_data

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer if not uses_external_data(t)}
    for _, node in _walk(graph):
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def _type_of(node, rule: dict, values: dict) -> Optional[int]:
    """The elem type of the tensor the table's types column describes (default: the first input)."""
    which = rule.get("type_of", "input0")
    if which == "to":
        return next((a.i for a in node.attribute if a.name == "to"), None)
    names = node.output if which.startswith("output") else node.input
    index = int(which.removeprefix("output").removeprefix("input"))
    if len(names) <= index or not names[index]:
        return None
    return values.get(names[index], (None, None))[0]


def _type_name(elem: Optional[int], table: OpTable) -> Optional[str]:
    import onnx

    if not elem:
        return None
    onnx_name = onnx.TensorProto.DataType.Name(elem)
    return table.type_names.get(onnx_name, onnx_name)


# -- files and directories ----------------------------------------------------------------------------
def onnx_files(path: str | Path) -> list[tuple[Path, str]]:
    """(file, label) to lint: one file; every ONNX variant of an artifact directory (hash-checked against its
    manifest); or, for a directory without a manifest, its ``*.onnx`` files."""
    from cmpf.manifest import MANIFEST_NAME, Manifest

    path = Path(path)
    if path.is_file():
        return [(path, str(path))]
    if not path.is_dir():
        raise InputError(f"--onnx {path}: no such file or directory")
    if (path / MANIFEST_NAME).is_file():
        manifest = Manifest.read(path)
        files = []
        for graph in manifest.graphs:
            for precision in manifest.precisions(graph, "onnx"):
                artifact = manifest.artifact(graph, "onnx", precision)
                files.append((artifact.path, str(artifact.path)))
        return files
    files = sorted(path.glob("*.onnx"))
    if not files:
        raise InputError(f"--onnx {path}: no .onnx files and no manifest.json there")
    return [(f, str(f)) for f in files]


def lint_path(path: str | Path, *, profiles: Optional[Sequence[Profile]] = None,
              size_limit: int = PROTOBUF_LIMIT) -> tuple[list[Path], list[Finding]]:
    """Every file of ``onnx_files(path)`` and all their findings."""
    files = onnx_files(path)
    findings = [f for p, label in files for f in lint_model(p, profiles=profiles, size_limit=size_limit, label=label)]
    return [p for p, _ in files], findings
