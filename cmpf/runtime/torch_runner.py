"""Eager runner: calls the graph wrappers of ``cmpf.model.graphs`` on the reference model.

The only module of ``cmpf.runtime`` that imports the model code (an import-linter contract).
"""

from __future__ import annotations

from typing import Mapping

import torch

from cmpf.manifest import Manifest
from cmpf.model import build_model
from cmpf.model.cmpf import CMPF
from cmpf.model.graphs import call_graph, graph_module, model_specs
from cmpf.spec import check_inputs


class TorchRunner:
    backend = "torch"

    def __init__(self, model: CMPF, graph: str):
        self.module = graph_module(model, graph)  # refuses a graph the model does not have
        self.graph = model_specs(model)[graph]

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_inputs(self.graph, inputs)
        return call_graph(self.module, self.graph, inputs)

    def close(self) -> None:
        self.module = None


def torch_runners(model: CMPF) -> dict[str, TorchRunner]:
    return {name: TorchRunner(model, name) for name in model_specs(model)}


def model_from_manifest(manifest: Manifest, device: str | torch.device = "cpu") -> CMPF:
    """The eager model of an export: the manifest's config with its recorded (verified) weights."""
    return build_model(manifest.model, checkpoint=manifest.weights_path()).to(device)
