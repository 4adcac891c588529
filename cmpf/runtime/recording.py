"""``RecordingRunner``: a runner that keeps copies of the inputs it was called with.

Used to capture what the real pipeline feeds each graph: the inputs of a parity check (the first
call) and the calibration set of a quantiser (every call, up to ``limit``).
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch

from cmpf.runtime.base import Runner


class RecordingRunner:
    """Wraps ``runner``; ``calls`` holds detached copies of the inputs of the first ``limit`` calls."""

    def __init__(self, runner: Runner, limit: Optional[int] = 1):
        self.runner, self.backend, self.graph = runner, runner.backend, runner.graph
        self.limit = limit
        self.calls: list[dict[str, torch.Tensor]] = []

    @property
    def inputs(self) -> Optional[dict[str, torch.Tensor]]:
        """The first call's inputs (None: never called)."""
        return self.calls[0] if self.calls else None

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.limit is None or len(self.calls) < self.limit:
            self.calls.append({k: v.detach().clone() for k, v in inputs.items()})
        return self.runner(inputs)

    def close(self) -> None:
        self.runner.close()
