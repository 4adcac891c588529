"""The Runner protocol: named torch tensors in, named torch tensors out, one graph each."""

from __future__ import annotations

from typing import Mapping, Protocol

import torch

from cmpf.spec import GraphSpec


class Runner(Protocol):
    backend: str  # a cmpf.backend.Backend value
    graph: GraphSpec

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def close(self) -> None: ...
