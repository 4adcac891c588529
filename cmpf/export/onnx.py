"""``torch.export`` program + ``GraphSpec`` → ``<graph>.<precision>.onnx`` (checked, written atomically).

The program's dynamic dims (``cmpf.export.program``) become named ONNX dims: the graph inputs and
outputs are renamed to the spec's names (``batch``, ``height``, ``num_classes``...), so that a
reader of the file sees the same vocabulary as ``cmpf.spec``. Weights go to an external
``<file>.data`` above protobuf's 2 GB limit, or always with ``external_data=True``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch.export import ExportedProgram

from cmpf.spec import GraphSpec

DEFAULT_OPSET = 20  # ≥ 18 (LayerNorm, GridSample 4-D); 20 adds native Gelu for ConvNeXt


def export_onnx(program: ExportedProgram, spec: GraphSpec, path: str | Path, *,
                opset: int = DEFAULT_OPSET, external_data: bool = False,
                custom_translation_table: Optional[dict] = None) -> list[Path]:
    """Write the ONNX file of one graph; returns the model path followed by its external-data files.

    The file is staged in a temporary directory beside ``path`` and moved into place only after
    ``onnx.checker`` accepts it, so an interrupted export never leaves a half-written model.

    Args:
        custom_translation_table: torch op → ONNX builder, e.g. the TensorRT plugin nodes of
            ``cmpf.engines.plugin_export.translation_table`` (``cmpf export --plugins``).
    """
    import onnx  # noqa: PLC0415 (optional dependency: cmpf[onnx])

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program = torch.onnx.export(program, (), input_names=spec.input_names, output_names=spec.output_names,
                                     opset_version=opset, dynamo=True, optimize=True, verbose=False,
                                     custom_translation_table=custom_translation_table)
    name_io_dims(onnx_program.model, spec)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staged = Path(tmp) / path.name
        # external data (<name>.data) when asked or when the model exceeds 2 GB
        onnx_program.save(staged, external_data=external_data or None)
        onnx.checker.check_model(str(staged))  # the path form also checks external data
        extras = sorted(f for f in Path(tmp).iterdir() if f != staged)
        for f in extras + [staged]:  # the model last: it names its data files
            os.replace(f, path.parent / f.name)
    return [path] + [path.parent / f.name for f in extras]


def name_io_dims(model, spec: GraphSpec) -> None:
    """Give the graph inputs and outputs of an ``onnx_ir`` model the spec's names and dim names."""
    import onnx_ir as ir  # noqa: PLC0415 (ships with onnxscript)

    for values, tensors in ((model.graph.inputs, spec.inputs), (model.graph.outputs, spec.outputs)):
        if [v.name for v in values] != [t.name for t in tensors]:
            raise RuntimeError(f"{spec.name}: exported names {[v.name for v in values]} differ from the spec "
                               f"{[t.name for t in tensors]}")
        for value, t in zip(values, tensors):
            if len(value.shape) != len(t.dims):
                raise RuntimeError(f"{spec.name}.{t.name}: exported rank {len(value.shape)}, spec {t.dims}")
            pinned = [(i, d) for i, (e, d) in enumerate(zip(value.shape, t.dims)) if isinstance(e, int) and
                      isinstance(d, str)]
            if pinned:  # the trace specialised a dynamic dim (e.g. a batch-1 trace): refuse the file
                raise RuntimeError(f"{spec.name}.{t.name}: dims {pinned} became static in the export")
            value.shape = ir.Shape([d if isinstance(d, int) else ir.SymbolicDim(d) for d in t.dims])
