"""AOTInductor runner: one ``.pt2`` package behind the ``Runner`` protocol.

The package was compiled for one device type (recorded in the manifest); it is called with the
spec's inputs in order and returns the spec's outputs in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from cmpf.spec import GraphSpec, check_inputs


class AotiRunner:
    backend = "aoti"

    def __init__(self, path: str | Path, graph: GraphSpec, device: str | torch.device = "cpu"):
        """Load the package ``path`` (already verified against its manifest) for ``graph``."""
        self.graph = graph
        self.device = torch.device(device)
        self.package = torch._inductor.aoti_load_package(str(path))

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_inputs(self.graph, inputs)
        args = [inputs[n].to(self.device).contiguous() for n in self.graph.input_names]
        out = self.package(*args)
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        if len(out) != len(self.graph.outputs):
            raise RuntimeError(f"{self.graph.name}: package returned {len(out)} outputs, spec has "
                               f"{self.graph.output_names}; re-export the graph")
        return dict(zip(self.graph.output_names, out))

    def close(self) -> None:
        self.package = None
