"""``cmpf bench --cuda-graph``: each graph runner captured once per input shape as a ``torch.cuda.CUDAGraph``
and timed by replaying it.

Runner + the inputs the pipeline gave it (on a CUDA device) → a ``GraphReplay``: static input buffers,
the runner's outputs as static output buffers, and a ``replay`` that refills the inputs (from host
memory when host transfer is included) and relaunches the recorded kernels. A runner allows capture
when it launches its work on the current torch stream and neither syncs nor allocates through
another library during the call: the eager and AOTInductor runners, TensorRT engines
(``execute_async_v3`` on the current stream) and Torch-TensorRT programs. ONNX Runtime and OpenVINO
run on their own streams (ONNX Runtime's CUDA graphs are a session option of its own), so their
rows are timed without capture and the report says why. A capture that fails (a host sync inside
the runner, a data-dependent shape) is reported the same way, never hidden.

Untested on a GPU so far: the CPU-side choices (``capture_refusal``, ``BenchConfig`` checks) are
unit-tested; ``GraphReplay`` needs CUDA.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch

from cmpf.runtime.base import Runner

CAPTURABLE_BACKENDS = ("torch", "aoti", "tensorrt", "torch-tensorrt")  # work on the current torch stream
WARMUP_BEFORE_CAPTURE = 3  # lazy inits (cuBLAS handles, autotuning, allocator pools) happen before capture


def capture_refusal(runner: Runner, device: str | torch.device) -> Optional[str]:
    """Why ``runner`` is not captured on ``device`` (None: it is)."""
    if torch.device(device).type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device}"
    if runner.backend not in CAPTURABLE_BACKENDS:
        return (f"the {runner.backend} runner launches work outside the current torch stream; CUDA-graph "
                f"capture covers the {', '.join(CAPTURABLE_BACKENDS)} runners")
    return None


class GraphReplay:
    """One runner captured on one set of input shapes; ``__call__`` refills the inputs and replays."""

    def __init__(self, runner: Runner, inputs: Mapping[str, torch.Tensor], device: str | torch.device):
        self.device = torch.device(device)
        self.static_inputs = {k: v.detach().to(self.device).clone() for k, v in inputs.items()}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_BEFORE_CAPTURE):
                runner(self.static_inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_outputs = runner(self.static_inputs)

    def __call__(self, inputs: Optional[Mapping[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """Replay; ``inputs`` (e.g. host tensors) are copied into the static buffers first."""
        for name, value in (inputs or {}).items():
            self.static_inputs[name].copy_(value, non_blocking=True)
        self.graph.replay()
        return self.static_outputs


def capture(runner: Runner, inputs: Mapping[str, torch.Tensor],
            device: str | torch.device) -> tuple[Optional[GraphReplay], Optional[str]]:
    """(the captured runner, None) or (None, why it was not captured)."""
    refusal = capture_refusal(runner, device)
    if refusal is not None:
        return None, refusal
    try:
        return GraphReplay(runner, inputs, device), None
    except RuntimeError as e:  # a sync or an allocation the capture forbids: reported, timed without capture
        torch.cuda.synchronize(device)
        return None, f"capture failed ({' '.join(str(e).split())[:160]})"
