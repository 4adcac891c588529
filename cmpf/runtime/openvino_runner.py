"""OpenVINO runner: one ``.onnx`` graph (fp32, fp16 casts or Q/DQ int8) on OpenVINO's CPU plugin.

OpenVINO reads the same ONNX file ONNX Runtime runs (external weights beside it too) and compiles it
for the latency hint: one stream, one thread per physical core of this process's CPU set unless
``threads`` says otherwise, static for each input shape on that shape's first call (a few kept). Inference
precision is f32 by default, so fp32 graphs stay within the tolerance table's 1e-4 of ONNX Runtime;
``inference_precision="bf16"`` lets the plugin run matmuls and convolutions in bf16, and ``"auto"`` (what
``load_runner`` asks for int8 files: their Q/DQ matmuls run in int8, the attention matmuls, norms and
softmax between them in bf16) takes bf16 where the CPU has bf16 kernels. OpenVINO quietly compiles f32
on a CPU without bf16 kernels (AVX-512 BF16 or AMX; AVX2-only CPUs have none), so this runner refuses
bf16 there instead. Torch tensors in and out by name; inputs are shared with OpenVINO, outputs are
copied out of its buffers.

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
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Literal, Mapping, Optional

import numpy as np
import openvino as ov
import openvino.properties as props
import openvino.properties.hint as hints
import torch

from cmpf.errors import EnvironmentProblem, InputError
from cmpf.manifest import ArtifactError
from cmpf.spec import GraphSpec, check_inputs

_OV_TYPES = {"f32": "float32", "f16": "float16", "i64": "int64", "boolean": "bool"}
_PRECISIONS = {"fp32": ov.Type.f32, "bf16": ov.Type.bf16}  # cmpf's names -> INFERENCE_PRECISION_HINT
Precision = Literal["fp32", "bf16", "auto"]


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


def has_bf16_kernels(core: Optional["ov.Core"] = None) -> bool:
    """Whether OpenVINO's CPU plugin has bf16 kernels here (AVX-512 BF16 or AMX)."""
    with _signal_stack_kept():
        return "BF16" in (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _name(port, expected: Optional[str]) -> str:
    """The port's name: ``expected`` when it is one of the port's tensor names (OpenVINO keeps aliases)."""
    return expected if expected in port.get_names() else port.get_any_name()


class OpenVinoRunner:
    backend = "openvino"

    def __init__(self, path: str | Path, graph: GraphSpec, device: str | torch.device = "cpu",
                 threads: Optional[int] = None, inference_precision: Optional[Precision] = None,
                 shapes: int = 4):
        """Open ``path`` (already verified against its manifest) for ``graph`` on the CPU.

        Args:
            threads: inference threads (OpenVINO's default: one per physical core).
            inference_precision: ``fp32`` (None) or ``bf16``, OpenVINO's inference-precision hint; ``auto``:
                bf16 where the CPU has bf16 kernels, else fp32 (what ``load_runner`` asks for int8 files).
            shapes: input shapes kept compiled. Each new shape is compiled static on its first call (the
                CPU plugin fuses attention into one kernel only in static models: SAM ViT-B bf16 2.7 s
                static vs 3.7 s dynamic on two AMX Xeon cores); the least recently used is dropped
                beyond ``shapes``. 0: one dynamic-shape model for every shape (also where a static compile
                fails: OpenVINO 2026.4 throws on the bf16 files' attention in static models).
        """
        self.graph = graph
        self.device = torch.device(device)
        if self.device.type != "cpu":
            raise InputError(f"the openvino backend runs on the CPU only, not {self.device}; use --device cpu")
        precision = inference_precision or "fp32"
        if precision not in (*_PRECISIONS, "auto"):
            raise InputError(f"OpenVINO inference precision {precision!r}; choose one of {', '.join(_PRECISIONS)}")
        self.shapes = shapes
        with _signal_stack_kept():  # every OpenVINO call of the set-up (module docstring)
            self._core = ov.Core()
            bf16 = has_bf16_kernels(self._core)
            if precision == "auto":
                precision = "bf16" if bf16 else "fp32"
            if precision == "bf16" and not bf16:
                capabilities = self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
                raise EnvironmentProblem(f"OpenVINO has no bf16 kernels on this CPU (it offers "
                                         f"{', '.join(capabilities)}; bf16 needs AVX-512 BF16 or AMX); run the fp32 "
                                         f"or int8 files instead")
            self._model = self._core.read_model(str(path))
            self._reshape_if_static(self._model)
            self._check_ports(path)
            self._config = {hints.performance_mode: hints.PerformanceMode.LATENCY,
                            hints.inference_precision: _PRECISIONS[precision]}
            if threads:
                self._config[props.inference_num_threads] = threads
        self.inference_precision = _PRECISIONS[precision].get_type_name()  # "f32" or "bf16"
        self.threads = threads  # None until the first compile reports OpenVINO's choice
        self._requests: OrderedDict[tuple, tuple] = OrderedDict()  # input shapes -> (compiled model, request)

    def _request(self, feeds: Mapping[str, np.ndarray]) -> tuple:
        """The compiled model and infer request for these inputs' shapes (compiled on first use)."""
        key = tuple(feeds[t.name].shape for t in self.graph.inputs) if self.shapes else ()
        if key in self._requests:
            self._requests.move_to_end(key)
            return self._requests[key]
        compiled = None
        if self.shapes and not all(port.get_partial_shape().is_static for port in self._model.inputs):
            model = self._model.clone()
            model.reshape({port: ov.PartialShape(list(shape)) for port, shape in zip(model.inputs, key)})
            try:
                compiled = self._core.compile_model(model, "CPU", self._config)
            except RuntimeError:  # OpenVINO 2026.4 cannot fuse the bf16 files' fp32 softmax casts in static
                self.shapes, key = 0, ()  # models ("Topological order is required"): dynamic from now on
                self._requests.clear()
        if compiled is None:
            compiled = self._core.compile_model(self._model, "CPU", self._config)
        self.threads = compiled.get_property(props.inference_num_threads)
        self._requests[key] = compiled, compiled.create_infer_request()
        while len(self._requests) > max(self.shapes, 1):
            self._requests.popitem(last=False)
        return self._requests[key]

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
        """The model's inputs and outputs must be the spec's: names, order, ranks, dtypes."""
        for kind, actual, expected in (("inputs", self._model.inputs, self.graph.inputs),
                                       ("outputs", self._model.outputs, self.graph.outputs)):
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
            compiled, request = self._request(feeds)
            results = request.infer(feeds, share_inputs=True)  # share_outputs=False: copies we own
        return {t.name: torch.from_numpy(results[port]) for t, port in zip(self.graph.outputs, compiled.outputs)}

    def close(self) -> None:
        with _signal_stack_kept():
            self._requests.clear()
            self._model = self._core = None
