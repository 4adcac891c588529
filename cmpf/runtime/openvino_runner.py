"""OpenVINO runner: one ``.onnx`` graph (fp32, fp16 casts or Q/DQ int8) on OpenVINO's CPU plugin.

OpenVINO reads the same ONNX file ONNX Runtime runs (external weights beside it too) and compiles it
for the latency hint: one stream, one thread per physical core of this process's CPU set unless
``threads`` says otherwise. Inference precision is f32 by default, so fp32 graphs stay within the
tolerance table's 1e-4 of ONNX Runtime; ``inference_precision="bf16"`` lets the plugin run matmuls
and convolutions in bf16. OpenVINO quietly compiles f32 on a CPU without bf16 kernels (AVX-512 BF16
or AMX; AVX2-only CPUs have none), so this runner refuses bf16 there instead. Torch tensors in and
out by name; inputs are shared with OpenVINO, outputs are copied out of its buffers.

OpenVINO 2026.4's CPU plugin gives the calling thread an alternate signal stack of its own while it
compiles a model and puts back the one it found when the model is released; models released in
another order than made (two runners, the first dropped first) leave the thread's alternate stack on
unmapped memory, and the next signal with a handler (a child process ending under torch's DataLoader
SIGCHLD handler) kills the process with SIGSEGV. Every OpenVINO call here keeps the thread's alternate
stack as it was (``_signal_stack_kept``).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from pathlib import Path
from typing import Iterator, Literal, Mapping, Optional

import openvino as ov
import openvino.properties as props
import openvino.properties.hint as hints
import torch

from cmpf.errors import EnvironmentProblem, InputError
from cmpf.manifest import ArtifactError
from cmpf.spec import GraphSpec, check_inputs

_OV_TYPES = {"f32": "float32", "f16": "float16", "i64": "int64", "boolean": "bool"}
_PRECISIONS = {"fp32": ov.Type.f32, "bf16": ov.Type.bf16}  # cmpf's names -> INFERENCE_PRECISION_HINT


class _StackT(ctypes.Structure):  # POSIX stack_t
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform != "win32" else None


def signal_stack() -> tuple[int, int, int]:
    """The calling thread's alternate signal stack: (address, flags, size); zeros where there is none."""
    if _LIBC is None:
        return 0, 0, 0
    current = _StackT()
    _LIBC.sigaltstack(None, ctypes.byref(current))
    return current.ss_sp or 0, current.ss_flags, current.ss_size


@contextlib.contextmanager
def _signal_stack_kept() -> Iterator[None]:
    """Put the thread's alternate signal stack back as it was after the OpenVINO call (module docstring)."""
    if _LIBC is None:
        yield
        return
    saved = _StackT()
    _LIBC.sigaltstack(None, ctypes.byref(saved))
    try:
        yield
    finally:
        if saved.ss_flags & 1 == 0:  # not SS_ONSTACK: it cannot change while a handler runs on it
            _LIBC.sigaltstack(ctypes.byref(saved), None)


def _name(port, expected: Optional[str]) -> str:
    """The port's name: ``expected`` when it is one of the port's tensor names (OpenVINO keeps aliases)."""
    return expected if expected in port.get_names() else port.get_any_name()


class OpenVinoRunner:
    backend = "openvino"

    def __init__(self, path: str | Path, graph: GraphSpec, device: str | torch.device = "cpu",
                 threads: Optional[int] = None, inference_precision: Optional[Literal["fp32", "bf16"]] = None):
        """Open ``path`` (already verified against its manifest) for ``graph`` on the CPU.

        Args:
            threads: inference threads (OpenVINO's default: one per physical core).
            inference_precision: ``fp32`` (None) or ``bf16``, OpenVINO's inference-precision hint.
        """
        self.graph = graph
        self.device = torch.device(device)
        if self.device.type != "cpu":
            raise InputError(f"the openvino backend runs on the CPU only, not {self.device}; use --device cpu")
        precision = inference_precision or "fp32"
        if precision not in _PRECISIONS:
            raise InputError(f"OpenVINO inference precision {precision!r}; choose one of {', '.join(_PRECISIONS)}")
        with _signal_stack_kept():  # every OpenVINO call of the set-up (module docstring)
            core = ov.Core()
            capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if precision == "bf16" and "BF16" not in capabilities:
                raise EnvironmentProblem(f"OpenVINO has no bf16 kernels on this CPU (it offers "
                                         f"{', '.join(capabilities)}; bf16 needs AVX-512 BF16 or AMX); run the fp32 "
                                         f"or int8 files instead")
            model = core.read_model(str(path))
            self._reshape_if_static(model)
            config = {hints.performance_mode: hints.PerformanceMode.LATENCY,
                      hints.inference_precision: _PRECISIONS[precision]}
            if threads:
                config[props.inference_num_threads] = threads
            self.compiled = core.compile_model(model, "CPU", config)
            self._check_ports(path)
            self.inference_precision = self.compiled.get_property(hints.inference_precision).get_type_name()
            self.threads = self.compiled.get_property(props.inference_num_threads)
            self.request = self.compiled.create_infer_request()
            del core, model  # released inside the guard too

    def _reshape_if_static(self, model: "ov.Model") -> None:
        """Make the spec's symbolic dims dynamic where the file fixed them (a no-op for cmpf's exports)."""
        wanted = {}
        for port, t in zip(model.inputs, self.graph.inputs):
            shape = port.get_partial_shape()
            if shape.rank.is_static and shape.rank.get_length() == len(t.dims) and any(
                    isinstance(d, str) and shape[i].is_static for i, d in enumerate(t.dims)):
                wanted[port] = ov.PartialShape([-1 if isinstance(d, str) else d for d in t.dims])
        if wanted:
            model.reshape(wanted)

    def _check_ports(self, path) -> None:
        """The compiled model's inputs and outputs must be the spec's: names, order, ranks, dtypes."""
        for kind, actual, expected in (("inputs", self.compiled.inputs, self.graph.inputs),
                                       ("outputs", self.compiled.outputs, self.graph.outputs)):
            want = [(t.name, len(t.dims), t.dtype) for t in expected]
            got = [(_name(port, want[i][0] if i < len(want) else None), port.get_partial_shape().rank.get_length(),
                    _OV_TYPES.get(port.get_element_type().get_type_name(), port.get_element_type().get_type_name()))
                   for i, port in enumerate(actual)]
            if got != want:
                raise ArtifactError(f"{path}: {kind} (name, rank, dtype) {got} do not match the {self.graph.name} "
                                    f"spec {want}; re-export the graph")

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_inputs(self.graph, inputs)
        feeds = {t.name: inputs[t.name].detach().cpu().contiguous().numpy() for t in self.graph.inputs}
        with _signal_stack_kept():
            results = self.request.infer(feeds, share_inputs=True)  # share_outputs=False: copies we own
        return {t.name: torch.from_numpy(results[port]) for t, port in zip(self.graph.outputs, self.compiled.outputs)}

    def close(self) -> None:
        with _signal_stack_kept():
            self.request = self.compiled = None
