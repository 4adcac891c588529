"""ONNX Runtime runner: one ``.onnx`` graph behind the ``Runner`` protocol, torch tensors in and out.

Inputs are bound zero-copy from torch tensors with I/O binding; outputs whose shape follows from
the inputs are preallocated as torch tensors and bound too, the others (e.g. ``K + 1`` logits) are
allocated by ONNX Runtime on the same device. CPUExecutionProvider by default; CUDA when the
device asks for it and the installed ONNX Runtime offers it. CPU sessions are tuned by
``session_options`` (threads = physical cores, sequential, arena on, idle threads sleep).

Measured on 2 shared cores (load average 1.5-11), ORT's default session vs this one: the six tiny
graphs in turn 956 -> 350 ms p50 (idle spinning pools no longer steal the busy one's cores); SAM
ViT-B at 1024x1024 30.6 -> 28.0 s p50, within the noise (benchmarks/results/cpu_backends.json).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import onnxruntime as ort
import torch

from cmpf.errors import EnvironmentProblem, InputError
from cmpf.manifest import ArtifactError
from cmpf.spec import GraphSpec, check_inputs

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(bool)": "bool"}
_NUMPY = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "bool": np.bool_}


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once).

    From ``os.sched_getaffinity`` and the (physical id, core id) pairs of /proc/cpuinfo; the number
    of usable logical CPUs where /proc/cpuinfo does not say.
    """
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores, cpu, package = set(), None, "0"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    package = value
                elif key == "core id" and cpu in cpus:
                    cores.add((package, value))
    except (OSError, ValueError):
        cores = set()
    return len(cores) or len(cpus)


def session_options(threads: Optional[int] = None, spinning: bool = False) -> ort.SessionOptions:
    """Tuned CPU session options: every graph optimisation, one thread per physical core for the ops,
    sequential execution with no inter-op pool, the memory arena and memory patterns on, and idle
    threads that sleep instead of spinning (a pipeline holds one session per graph plus torch's own
    threads, and other work may share the cores: spinning pools steal time from the busy one).

    Args:
        threads: intra-op threads (default ``physical_cores()``).
        spinning: let idle intra-op threads spin (ONNX Runtime's default).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = options.enable_mem_pattern = True
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def providers_for(device: torch.device) -> list[str]:
    """Execution providers for a torch device; raises when CUDA is asked but not available."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EnvironmentProblem(f"device {device} asks for ONNX Runtime's CUDAExecutionProvider, but this "
                               f"onnxruntime offers {ort.get_available_providers()} (pip install onnxruntime-gpu)")
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise InputError(f"ONNX Runtime runner supports cpu and cuda devices, not {device}")


class OnnxRuntimeRunner:
    backend = "onnxruntime"

    def __init__(self, path: str | Path, graph: GraphSpec, device: str | torch.device = "cpu",
                 threads: Optional[int] = None, options: Optional[ort.SessionOptions] = None):
        """Open ``path`` (already verified against its manifest) for ``graph`` on ``device``.

        Args:
            threads: intra-op threads (default: one per physical core).
            options: session options instead of ``session_options(threads)`` (benchmarks compare them).
        """
        self.graph = graph
        self.device = torch.device(device)
        options = options or session_options(threads)
        self.session = ort.InferenceSession(str(path), options, providers=providers_for(self.device))
        self._check_session(path)

    def _check_session(self, path) -> None:
        """The file's inputs and outputs must be the spec's: names, order, ranks, dtypes."""
        for kind, actual, expected in (("inputs", self.session.get_inputs(), self.graph.inputs),
                                       ("outputs", self.session.get_outputs(), self.graph.outputs)):
            got = [(a.name, len(a.shape), _ORT_TYPES.get(a.type, a.type)) for a in actual]
            want = [(t.name, len(t.dims), t.dtype) for t in expected]
            if got != want:
                raise ArtifactError(f"{path}: {kind} (name, rank, dtype) {got} do not match the {self.graph.name} "
                                 f"spec {want}; re-export the graph")

    def _bind(self, binding, name: str, x: torch.Tensor, is_input: bool) -> None:
        dev = "cuda" if x.device.type == "cuda" else "cpu"
        dtype = _NUMPY[str(x.dtype).removeprefix("torch.")]
        args = (name, dev, x.device.index or 0, dtype, tuple(x.shape), x.data_ptr())
        binding.bind_input(*args) if is_input else binding.bind_output(*args)

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_inputs(self.graph, inputs)
        binding = self.session.io_binding()
        sizes: dict[str, int] = {}
        feeds = {}
        for t in self.graph.inputs:
            feeds[t.name] = x = inputs[t.name].to(self.device).contiguous()  # kept alive until run ends
            sizes.update({d: n for d, n in zip(t.dims, x.shape) if isinstance(d, str)})
            self._bind(binding, t.name, x, is_input=True)
        outputs: dict[str, Optional[torch.Tensor]] = {}
        for t in self.graph.outputs:
            if all(isinstance(d, int) or d in sizes for d in t.dims):
                shape = [d if isinstance(d, int) else sizes[d] for d in t.dims]
                outputs[t.name] = torch.empty(shape, dtype=t.torch_dtype, device=self.device)
                self._bind(binding, t.name, outputs[t.name], is_input=False)
            else:
                outputs[t.name] = None
                binding.bind_output(t.name, "cuda" if self.device.type == "cuda" else "cpu", self.device.index or 0)
        self.session.run_with_iobinding(binding)
        allocated = [i for i, t in enumerate(self.graph.outputs) if outputs[t.name] is None]
        if allocated:
            values = binding.get_outputs()
            for i in allocated:
                # ONNX Runtime owns this buffer: copy it into a torch tensor (via host memory for CUDA)
                outputs[self.graph.outputs[i].name] = torch.from_numpy(values[i].numpy()).to(self.device)
        return outputs

    def close(self) -> None:
        self.session = None
