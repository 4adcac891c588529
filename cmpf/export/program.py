"""One graph → a ``torch.export`` program with the symbolic dims of ``cmpf.spec``.

Consumes the eval-mode wrapper of ``cmpf.model.graphs`` and its ``GraphSpec``; produces an
``ExportedProgram`` that both the ONNX exporter and AOTInductor lower. The spec's dim names become
``torch.export.Dim`` objects here and nowhere else: ``height``/``width`` (the padded CLIP input) are
32 × ``h32``/``w32``, and ``h4``..``w16`` are derived from the same two symbols, so that every feature
map of one graph stays consistent; all other names (``batch``, ``num_classes``...) are free dims.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch.export import Dim, ExportedProgram

from cmpf.spec import CONTEXT_LENGTH, GraphSpec

CLIP_STRIDE = 32  # coarsest CLIP stride: the padded input is a multiple of it
_STRIDED = re.compile(r"([hw])(\d+)")


@dataclass(frozen=True)
class TraceSizes:
    """Concrete sizes of the symbolic dims, for example inputs. Tracing needs every one ≥ 2: a
    size-1 (batch-1) trace silently fixes the dim (``export_program`` refuses such inputs)."""

    batch: int = 2
    h32: int = 4  # 128 px padded CLIP input height
    w32: int = 5  # 160 px
    num_classes: int = 3
    num_synonyms: int = 2
    num_prompts: int = 3
    num_points: int = 3

    def size_of(self, name: str) -> int:
        """Concrete value of a symbolic dim name of ``cmpf.spec``."""
        if name in ("height", "width"):
            return CLIP_STRIDE * (self.h32 if name == "height" else self.w32)
        match = _STRIDED.fullmatch(name)
        if match:
            base = self.h32 if match.group(1) == "h" else self.w32
            return base * CLIP_STRIDE // int(match.group(2))
        return getattr(self, name)


def export_dims(spec: GraphSpec) -> dict[str, Dim]:
    """``torch.export.Dim`` per symbolic name of the graph's inputs (derived dims share a root)."""
    roots = {"h": Dim("h32", min=2), "w": Dim("w32", min=2)}
    dims: dict[str, Dim] = {}
    for t in spec.inputs:
        for name in t.dims:
            if not isinstance(name, str) or name in dims:
                continue
            if name in ("height", "width"):
                dims[name] = CLIP_STRIDE * roots[name[0]]
            elif _STRIDED.fullmatch(name):
                axis, stride = _STRIDED.fullmatch(name).groups()
                factor = CLIP_STRIDE // int(stride)
                dims[name] = roots[axis] if factor == 1 else factor * roots[axis]
            else:
                dims[name] = Dim(name, min=1)
    return dims


def example_inputs(spec: GraphSpec, sizes: TraceSizes = TraceSizes(), device: str | torch.device = "cpu",
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Random valid inputs of ``spec`` at ``sizes`` (also used by the tests and benchmarks).

    Token ids end with the end-of-text id (the text tower reads the argmax position); synonym masks
    keep the first synonym of every class valid, as every real vocabulary does.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in spec.inputs:
        shape = tuple(d if isinstance(d, int) else sizes.size_of(d) for d in t.dims)
        if t.name == "token_ids":
            x = torch.randint(1, 49000, shape, generator=g)
            x[:, 0], x[:, min(7, CONTEXT_LENGTH - 1)], x[:, 8:] = 49406, 49407, 0  # SOT, EOT, padding
        elif t.name == "point_coords":  # XY inside the S × S SAM input frame (16-pixel embedding cells)
            side = 16 * next(e.dims[-1] for e in spec.inputs if e.name == "sam_embedding")
            x = torch.rand(shape, generator=g) * side
        elif t.name == "point_labels":
            x = torch.ones(shape)
        elif t.dtype == "bool":
            x = torch.rand(shape, generator=g) > 0.3
            x[..., 0] = True
        else:
            x = torch.randn(shape, generator=g, dtype=t.torch_dtype)
        out[t.name] = x.to(device)
    return out


def export_program(module: torch.nn.Module, spec: GraphSpec, inputs: dict[str, torch.Tensor]) -> ExportedProgram:
    """``torch.export`` the wrapper ``module`` with the spec's dynamic dims.

    Args:
        module: eval-mode wrapper (``cmpf.model.graphs.graph_module``) on the target device.
        spec: its ``GraphSpec``.
        inputs: example inputs by name (``example_inputs``), batch ≥ 2.
    """
    args = tuple(inputs[n] for n in spec.input_names)
    for t, x in zip(spec.inputs, args):
        small = [d for d, n in zip(t.dims, x.shape) if isinstance(d, str) and n < 2]
        if small:
            raise ValueError(f"{spec.name}.{t.name}: trace with sizes >= 2 for {small} (got {tuple(x.shape)}); "
                             "a size-1 trace fixes the dim")
    dims = export_dims(spec)
    shapes = torch.export.ShapesCollection()  # keyed by tensor, so any wrapper signature works
    for t, x in zip(spec.inputs, args):
        shapes[x] = {i: dims[d] for i, d in enumerate(t.dims) if isinstance(d, str)}
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=shapes.dynamic_shapes(module, args), strict=False)
