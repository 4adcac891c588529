"""TensorRT runner: one ``.engine`` file written by ``cmpf build`` behind the ``Runner`` protocol.

Consumes a verified engine artifact (``Manifest.artifact(graph, "engine", precision)``, whose recipe
records the TensorRT version, the GPU and the optimisation profiles) and torch CUDA tensors by name;
produces torch CUDA tensors by name. Inputs are bound by name (``set_input_shape``,
``set_tensor_address``), outputs are allocated from the shapes the engine resolves, and
``execute_async_v3`` runs on the current torch stream, so nothing synchronises and no pycuda is
involved; ``cuda_graphs=True`` captures one CUDA graph per input-shape signature. An engine built by
another TensorRT version or for another GPU is refused with the command that rebuilds it.

``EngineRecipe`` is the one home of the engine facts in the manifest (``GraphFile.recipe``): the build
side writes it, this runner reads it. TensorRT is imported when a runner is made, never at import.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from cmpf.errors import EnvironmentProblem, InputError
from cmpf.manifest import Artifact, ArtifactError
from cmpf.spec import GraphSpec, check_inputs

RECIPE_VERSION = 1
# TensorRT DataType member name -> torch dtype (names, so that fakes in the tests need no TensorRT)
_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8}


@dataclass(frozen=True)
class EngineRecipe:
    """How an engine file was built, stored as its manifest entry's ``recipe``."""

    tensorrt: str  # tensorrt.__version__ of the builder
    gpu: str  # torch.cuda.get_device_name of the build device
    compute_capability: str  # "9.0"
    source: str  # the file the engine came from (the ONNX variant, or the weights for torch-tensorrt)
    source_sha256: str
    precision: str
    profiles: tuple[dict, ...]  # per optimisation profile: {dim name: [min, opt, max]}
    built_at: str  # ISO 8601, UTC
    build_seconds: float
    builder: dict  # optimisation level, workspace, timing cache, plugins, strong typing
    warnings: tuple[str, ...]  # the builder log's warnings
    command: str  # the `cmpf build` command line that rebuilds this file
    route: str = "tensorrt"  # "tensorrt" (engine) or "torch-tensorrt" (TorchScript with embedded engines)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["profiles"], data["warnings"] = list(self.profiles), list(self.warnings)
        return {"recipe_version": RECIPE_VERSION, **data}

    @staticmethod
    def from_json(data: Optional[Mapping[str, Any]], path: str | Path) -> "EngineRecipe":
        fix = f"rebuild it with `cmpf build --artifacts {Path(path).parent}`"
        if not data or data.get("recipe_version") != RECIPE_VERSION:
            raise ArtifactError(f"{path}: no engine recipe (version {RECIPE_VERSION}) in the manifest; {fix}")
        fields = {f.name for f in dataclasses.fields(EngineRecipe)}
        try:
            values = {k: v for k, v in data.items() if k in fields}
            values["profiles"], values["warnings"] = tuple(values["profiles"]), tuple(values["warnings"])
            return EngineRecipe(**values)
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{path}: malformed engine recipe ({type(e).__name__}: {e}); {fix}") from None


@dataclass(frozen=True)
class DeviceFacts:
    """What an engine must match on the machine that runs it."""

    tensorrt: str
    gpu: str
    compute_capability: str


def device_facts(tensorrt_version: str, device: torch.device) -> DeviceFacts:
    major, minor = torch.cuda.get_device_capability(device)
    return DeviceFacts(tensorrt_version, torch.cuda.get_device_name(device), f"{major}.{minor}")


def check_engine(recipe: EngineRecipe, facts: DeviceFacts, path: str | Path) -> list[str]:
    """Refuse an engine of another TensorRT version or compute capability (one line, with the command that
    rebuilds it); a different GPU model of the same compute capability runs, with a warning returned."""
    if recipe.tensorrt != facts.tensorrt:
        raise ArtifactError(f"{path}: built by TensorRT {recipe.tensorrt}, this is TensorRT {facts.tensorrt} (engines "
                            f"only load in the version that built them); rebuild it with `{recipe.command}`")
    if recipe.compute_capability != facts.compute_capability:
        raise ArtifactError(f"{path}: built for {recipe.gpu} (compute capability {recipe.compute_capability}), this "
                            f"GPU is {facts.gpu} ({facts.compute_capability}); rebuild it on this GPU with "
                            f"`{recipe.command}`")
    if recipe.gpu != facts.gpu:
        return [f"{path}: tuned on {recipe.gpu}, running on {facts.gpu} (same compute capability, so it runs, but "
                f"the kernel choice may be slower); rebuild it here with `{recipe.command}`"]
    return []


# -- binding ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineIO:
    name: str
    is_input: bool
    dtype: torch.dtype


def engine_io(engine, input_mode) -> list[EngineIO]:
    """The engine's I/O tensors in engine order (``input_mode``: ``tensorrt.TensorIOMode.INPUT``)."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name)
        if dtype.name not in _TORCH_DTYPES:
            raise ArtifactError(f"engine tensor {name}: TensorRT dtype {dtype.name} has no torch equivalent")
        out.append(EngineIO(name, engine.get_tensor_mode(name) == input_mode, _TORCH_DTYPES[dtype.name]))
    return out


def check_bindings(io: list[EngineIO], spec: GraphSpec, path: str | Path, command: str) -> None:
    """The engine's inputs and outputs must be the spec's (names, dtypes); order does not matter: by name."""
    got = {(t.name, t.is_input, t.dtype) for t in io}
    want = {(t.name, True, t.torch_dtype) for t in spec.inputs} | {(t.name, False, t.torch_dtype) for t in spec.outputs}
    if got != want:
        diff = sorted(f"{n}{' (input)' if i else ''}: {d}" for n, i, d in got ^ want)
        raise ArtifactError(f"{path}: engine I/O differs from the {spec.name} spec ({', '.join(diff)}); rebuild it "
                            f"with `{command}`")


def choose_profile(engine, shapes: Mapping[str, tuple[int, ...]]) -> Optional[int]:
    """The first optimisation profile whose [min, max] ranges hold every input shape (None: none does)."""
    for index in range(engine.num_optimization_profiles):
        fits = True
        for name, shape in shapes.items():
            low, _, high = (tuple(d) for d in engine.get_tensor_profile_shape(name, index))
            fits = fits and len(low) == len(shape) and all(lo <= s <= hi for lo, s, hi in zip(low, shape, high))
        if fits:
            return index
    return None


def profile_ranges(engine, names) -> str:
    """``profile 0: x (1, 3, 320, 320)..(4, 3, 1344, 1344); profile 1: ...`` (for error messages)."""
    ranges = []
    for index in range(engine.num_optimization_profiles):
        parts = []
        for name in names:
            low, _, high = (tuple(d) for d in engine.get_tensor_profile_shape(name, index))
            parts.append(f"{name} {low}..{high}")
        ranges.append(f"profile {index}: " + ", ".join(parts))
    return "; ".join(ranges)


def checked_recipe(artifact: Artifact, device: torch.device, trt_version: str, files: str,
                   product: str) -> "EngineRecipe":
    """The recipe of an engine-bearing file, after refusing a non-CUDA device, a machine without a GPU, and
    a file built by another TensorRT version or for another GPU (``check_engine``; lesser mismatches warn)."""
    if device.type != "cuda":
        raise InputError(f"{artifact.path}: {files} run on CUDA devices, not {device}; use --device cuda")
    if not torch.cuda.is_available():
        raise EnvironmentProblem(f"{artifact.path}: {product} needs a CUDA GPU and torch sees none")
    recipe = EngineRecipe.from_json(artifact.recipe, artifact.path)
    for message in check_engine(recipe, device_facts(trt_version, device), artifact.path):
        warnings.warn(message, stacklevel=3)
    return recipe


class TensorRTRunner:
    backend = "tensorrt"

    def __init__(self, artifact: Artifact, device: str | torch.device = "cuda", *, cuda_graphs: bool = False):
        """Load and check ``artifact`` (a verified ``.engine`` file) on the CUDA ``device``.

        Args:
            cuda_graphs: capture one CUDA graph per input-shape signature and replay it (inputs are copied
                into the captured buffers; outputs are returned as fresh tensors).
        """
        import tensorrt as trt  # noqa: PLC0415 (optional dependency: cmpf[trt])

        device = torch.device(device)
        recipe = checked_recipe(artifact, device, trt.__version__, "TensorRT engines", "TensorRT")
        with torch.cuda.device(device):
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = self._runtime.deserialize_cuda_engine(Path(artifact.path).read_bytes())
        if engine is None:
            raise ArtifactError(f"{artifact.path}: TensorRT {trt.__version__} could not deserialize it (see its log "
                                f"above); rebuild it with `{recipe.command}`")
        self._setup(engine, artifact.graph, device, trt.TensorIOMode.INPUT, recipe.command, artifact.path, cuda_graphs)

    @classmethod
    def from_engine(cls, engine, graph: GraphSpec, device: str | torch.device, *, input_mode, command: str,
                    path: str | Path = "<engine>", cuda_graphs: bool = False,
                    stream: Optional[Callable[[], int]] = None) -> "TensorRTRunner":
        """A runner around an already deserialized engine (or a stand-in with the same methods, in tests)."""
        runner = cls.__new__(cls)
        runner._setup(engine, graph, torch.device(device), input_mode, command, path, cuda_graphs, stream)
        return runner

    def _setup(self, engine, graph, device, input_mode, command, path, cuda_graphs, stream=None) -> None:
        self.graph, self.device, self.engine, self.path, self.command = graph, device, engine, Path(path), command
        check_bindings(engine_io(engine, input_mode), graph, path, command)
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EnvironmentProblem(f"{path}: TensorRT could not create an execution context (out of GPU memory?)")
        self._profile: Optional[int] = None
        self._stream = stream or (lambda: torch.cuda.current_stream(self.device).cuda_stream)
        self._graphs: Optional[dict] = {} if cuda_graphs else None

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_inputs(self.graph, inputs)
        feeds = {t.name: inputs[t.name].to(self.device).contiguous() for t in self.graph.inputs}
        if self._graphs is not None:
            return self._replay(feeds)
        stream = self._stream()
        outputs = self._bind(feeds, stream)
        self._execute(stream)
        return outputs

    def _bind(self, feeds: Mapping[str, torch.Tensor], stream: int) -> dict[str, torch.Tensor]:
        """Select the profile, set shapes and addresses; outputs allocated from the resolved shapes."""
        shapes = {name: tuple(x.shape) for name, x in feeds.items()}
        profile = choose_profile(self.engine, shapes)
        if profile is None:
            raise InputError(f"{self.graph.name}: input shapes {shapes} are outside every optimisation profile of "
                             f"{self.path} ({profile_ranges(self.engine, list(shapes))}); rebuild with wider "
                             f"--shapes: `{self.command}`")
        if profile != self._profile:
            self.context.set_optimization_profile_async(profile, stream)
            self._profile = profile
        for name, x in feeds.items():
            if not self.context.set_input_shape(name, shapes[name]):
                raise InputError(f"{self.graph.name}.{name}: TensorRT refused shape {shapes[name]}")
            self.context.set_tensor_address(name, x.data_ptr())
        outputs = {}
        for t in self.graph.outputs:
            shape = tuple(self.context.get_tensor_shape(t.name))
            if any(d < 0 for d in shape):
                raise ArtifactError(f"{self.path}: output {t.name} has unresolved shape {shape} for inputs {shapes}; "
                                    f"rebuild it with `{self.command}`")
            outputs[t.name] = torch.empty(shape, dtype=t.torch_dtype, device=self.device)
            self.context.set_tensor_address(t.name, outputs[t.name].data_ptr())
        return outputs

    def _execute(self, stream: int) -> None:
        if not self.context.execute_async_v3(stream):
            raise EnvironmentProblem(f"{self.path}: TensorRT's execute_async_v3 failed (see the TensorRT log above)")

    def _replay(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One CUDA graph per input-shape signature: captured on first sight, replayed afterwards."""
        key = tuple((name, tuple(x.shape)) for name, x in feeds.items())
        if key not in self._graphs:
            static = {name: x.clone() for name, x in feeds.items()}
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                outputs = self._bind(static, side.cuda_stream)
                # the first enqueue after a shape change does setup work that must not be captured; its
                # results are this call's results
                self._execute(side.cuda_stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=side):
                    self._execute(side.cuda_stream)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._graphs[key] = (graph, static, outputs)
            return {name: y.clone() for name, y in outputs.items()}
        graph, static, outputs = self._graphs[key]
        for name, x in feeds.items():
            static[name].copy_(x)
        graph.replay()
        return {name: y.clone() for name, y in outputs.items()}

    def close(self) -> None:
        self._graphs = {} if self._graphs is not None else None
        self.context = None
        self.engine = None
