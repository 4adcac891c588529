"""Eager runner: calls the export wrapper of ``cmpf.export.graphs`` on the reference model."""

from __future__ import annotations

from typing import Mapping

import torch

from cmpf.export.graphs import call_graph, graph_module, model_specs
from cmpf.model.cmpf import CMPF
from cmpf.spec import check_inputs


class TorchRunner:
    backend = "torch"

    def __init__(self, model: CMPF, graph: str):
        self.graph = model_specs(model)[graph] if graph in model_specs(model) else None
        self.module = graph_module(model, graph)

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_inputs(self.graph, inputs)
        return call_graph(self.module, self.graph, inputs)

    def close(self) -> None:
        self.module = None


def torch_runners(model: CMPF) -> dict[str, TorchRunner]:
    return {name: TorchRunner(model, name) for name in model_specs(model)}
