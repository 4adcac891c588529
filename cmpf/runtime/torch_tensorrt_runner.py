"""Torch-TensorRT runner: a ``.ts`` program written by ``cmpf build --route torch-tensorrt``.

Consumes a verified TorchScript file whose TensorRT engines Torch-TensorRT embedded (its manifest
recipe records the TensorRT version and GPU, checked as for ``.engine`` files) and torch CUDA tensors
by name; produces torch CUDA tensors by name. The program takes the spec's inputs positionally and
returns its outputs in spec order. ``import torch_tensorrt`` registers the TorchScript engine class,
so it happens when a runner is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from cmpf.manifest import Artifact, ArtifactError
from cmpf.runtime.tensorrt_runner import checked_recipe
from cmpf.spec import GraphSpec, check_inputs


class TorchTensorRTRunner:
    backend = "torch-tensorrt"

    def __init__(self, artifact: Artifact, device: str | torch.device = "cuda"):
        import tensorrt
        import torch_tensorrt  # noqa: F401 (registers the TensorRT engine class TorchScript loads)

        device = torch.device(device)
        recipe = checked_recipe(artifact, device, tensorrt.__version__, "Torch-TensorRT programs", "Torch-TensorRT")
        module = torch.jit.load(str(artifact.path), map_location=device)
        self._setup(module.eval(), artifact.graph, device, artifact.path, recipe.command)

    @classmethod
    def from_module(cls, module, graph: GraphSpec, device: str | torch.device, *, path: str | Path = "<program>",
                    command: str = "cmpf build --route torch-tensorrt") -> "TorchTensorRTRunner":
        """A runner around a loaded module (the tests use a plain TorchScript module)."""
        runner = cls.__new__(cls)
        runner._setup(module, graph, torch.device(device), path, command)
        return runner

    def _setup(self, module, graph: GraphSpec, device: torch.device, path, command: str) -> None:
        self.module, self.graph, self.device, self.path, self.command = module, graph, device, Path(path), command

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_inputs(self.graph, inputs)
        args = [inputs[name].to(self.device).contiguous() for name in self.graph.input_names]
        with torch.no_grad():
            result = self.module(*args)
        result = tuple(result) if isinstance(result, (tuple, list)) else (result,)
        if len(result) != len(self.graph.outputs):
            raise ArtifactError(f"{self.path}: the program returns {len(result)} tensors, the {self.graph.name} spec "
                                f"has {len(self.graph.outputs)} outputs; rebuild it with `{self.command}`")
        return dict(zip(self.graph.output_names, result))

    def close(self) -> None:
        self.module = None
