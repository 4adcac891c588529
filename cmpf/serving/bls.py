"""Graph calls between the models of a Triton repository (``cmpf.serving.triton_repo``).

``BlsRunner`` is a ``Runner`` (named torch tensors in and out) whose call is a BLS request to the
repository's model of that graph, so ``cmpf_segment`` runs the one pipeline unchanged over the
graph models. ``GraphModel`` is the Python-backend model of one graph for ``--graph-backend
python``: it runs cmpf's runner of the configured backend on the graph's file. Both live in the
backend's stub and move tensors through DLPack only (see ``cmpf.serving``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch

from cmpf.backend import Backend
from cmpf.errors import EnvironmentProblem
from cmpf.manifest import Manifest
from cmpf.spec import GraphSpec, check_inputs


def to_triton(pb_utils, name: str, tensor: torch.Tensor):
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(tensor.contiguous()))


def to_torch(tensor) -> torch.Tensor:
    return torch.from_dlpack(tensor.to_dlpack())


class BlsRunner:
    """The graph ``spec.name`` as served by the repository's model of that name."""

    backend = "triton"

    def __init__(self, spec: GraphSpec):
        self.graph = spec

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import triton_python_backend_utils as pb_utils

        check_inputs(self.graph, inputs)
        request = pb_utils.InferenceRequest(
            model_name=self.graph.name, requested_output_names=self.graph.output_names,
            inputs=[to_triton(pb_utils, t.name, inputs[t.name].cpu()) for t in self.graph.inputs])
        response = request.exec()
        if response.has_error():
            raise EnvironmentProblem(f"the graph model {self.graph.name} failed: {response.error().message()}")
        return {name: to_torch(pb_utils.get_output_tensor_by_name(response, name)).clone()
                for name in self.graph.output_names}

    def close(self) -> None:
        pass


def bls_runners(manifest: Manifest) -> dict[str, BlsRunner]:
    return {graph: BlsRunner(entry.spec) for graph, entry in manifest.graphs.items()}


class GraphModel:
    """One graph's Python-backend model: cmpf's runner of the configured backend on the graph's file."""

    def initialize(self, args: dict) -> None:
        from cmpf.runtime import load_runner

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # the files sit in cmpf_segment's artifacts (one copy for every model of the repository)
        artifacts = Path(args["model_repository"]).parent / "cmpf_segment" / "1" / "artifacts"
        manifest = Manifest.read(artifacts)
        backend = Backend.parse(params["runner"])
        artifact = manifest.artifact(config["name"], backend.format)
        self.runner = load_runner(backend, artifact, params.get("device", "cpu"))

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            inputs = {t.name: to_torch(pb_utils.get_input_tensor_by_name(request, t.name))
                      for t in self.runner.graph.inputs}
            try:
                with torch.inference_mode():
                    outputs = self.runner(inputs)
            except Exception as e:  # noqa: BLE001 (the request fails, the model goes on)
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(" ".join(str(e).split()), pb_utils.TritonError.INTERNAL)))
                continue
            responses.append(pb_utils.InferenceResponse([to_triton(pb_utils, n, v.cpu()) for n, v in outputs.items()]))
        return responses

    def finalize(self) -> None:
        self.runner.close()
