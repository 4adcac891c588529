"""``cmpf build``: an artifact directory's ONNX graphs → strongly typed TensorRT engines + manifest entries.

Consumes an artifact directory (``cmpf export``; precision variants from ``cmpf quantize``) and an
``EngineConfig``; produces ``<graph>.<precision>.engine`` files (or ``.ts`` Torch-TensorRT programs with
``route="torch-tensorrt"``) and their manifest entries, whose recipe (``EngineRecipe``) records the
TensorRT version, GPU name and compute capability, profile ranges, the source's sha256, the build time
and the builder log's warnings. Reads top to bottom: plan (which source file, which profiles, which
plugins) → build each graph through a builder function → stage the files → write the manifest last,
so an interrupted build leaves the directory as it was. Everything here but the builder is pure and
tested without TensorRT; the builder that calls TensorRT is ``cmpf.engines.tensorrt_build``.
"""

from __future__ import annotations

import datetime
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Protocol

from cmpf.engines.plugins import PLUGIN_NAMESPACE, PLUGIN_OPS
from cmpf.engines.profiles import Profile, profiles_from
from cmpf.errors import InputError
from cmpf.io import Staging, sha256_file
from cmpf.manifest import FORMAT_SUFFIX, MANIFEST_NAME, Artifact, GraphFile, Manifest, parse_precision, variant_key
from cmpf.runtime.tensorrt_runner import EngineRecipe

Route = Literal["tensorrt", "torch-tensorrt"]
ROUTE_FORMAT = {"tensorrt": "engine", "torch-tensorrt": "torchtrt"}
MIN_TENSORRT = (10, 12)  # strongly typed networks with the plugin AOT path; 11.x is strongly typed only


@dataclass(frozen=True)
class EngineConfig:
    artifacts: str  # the directory written by `cmpf export`; engines are added to it
    precision: Optional[str] = None  # --precision: "fp16" (every graph) or "decoder=fp16,..."; None: fp32
    graphs: Optional[tuple[str, ...]] = None  # None: every graph of the directory
    shapes: tuple[str, ...] = ()  # one --shapes text per optimisation profile (default: profiles.DEFAULT_RANGES)
    timing_cache: Optional[str] = None  # persistent timing cache file, read and updated
    opt_level: int = 3  # builder_optimization_level, 0..5 (TensorRT's default is 3)
    workspace_gb: float = 4.0  # the WORKSPACE memory-pool limit
    plugins: tuple[str, ...] = ()  # cmpf's AOT plugins the graphs use (exported with `cmpf export --plugins`)
    route: Route = "tensorrt"
    device: str = "cuda"

    def __post_init__(self) -> None:
        if not 0 <= self.opt_level <= 5:
            raise InputError(f"--opt-level {self.opt_level}: TensorRT's builder optimisation level is 0..5")
        if not self.workspace_gb > 0:
            raise InputError(f"--workspace {self.workspace_gb}: give a positive size in GB")
        unknown = sorted(set(self.plugins) - set(PLUGIN_OPS))
        if unknown:
            raise InputError(f"--plugins: unknown plugins {unknown}; cmpf's plugins are {', '.join(PLUGIN_OPS)}")
        if self.route not in ROUTE_FORMAT:
            raise InputError(f"--route {self.route!r}: choose {' or '.join(ROUTE_FORMAT)}")
        if self.route == "torch-tensorrt" and self.plugins:
            raise InputError("--plugins apply to --route tensorrt (ONNX custom nodes), not to torch-tensorrt")

    def command(self, graphs: Optional[tuple[str, ...]] = None, precision: Optional[str] = None) -> str:
        """The `cmpf build` command line that rebuilds ``graphs`` at ``precision`` (default: this build)."""
        args = ["cmpf", "build", "--artifacts", self.artifacts]
        precision = precision if precision is not None else self.precision
        if precision and precision != "fp32":
            args += ["--precision", precision]
        graphs = graphs or self.graphs
        if graphs:
            args += ["--graphs", ",".join(graphs)]
        for text in self.shapes:
            args += ["--shapes", text]
        for flag, value, default in (("--timing-cache", self.timing_cache, None), ("--opt-level", self.opt_level, 3),
                                     ("--workspace", self.workspace_gb, 4.0), ("--route", self.route, "tensorrt"),
                                     ("--device", self.device, "cuda")):
            if value != default:
                args += [flag, str(value)]
        if self.plugins:
            args += ["--plugins", ",".join(self.plugins)]
        return shlex.join(args)


@dataclass(frozen=True)
class BuildJob:
    """One file to build: a graph at a precision, from a verified source, under the given profiles."""

    graph: str
    precision: str
    source: Optional[Artifact]  # the ONNX variant (route tensorrt); None for torch-tensorrt (from the weights)
    name: str  # the file written, relative to the artifact directory
    profiles: tuple[Profile, ...]
    plugins: tuple[str, ...]

    def profile_shapes(self, spec) -> list[dict]:
        """Per profile: {input name: (min shape, opt shape, max shape)}."""
        return [p.shapes(spec) for p in self.profiles]


@dataclass(frozen=True)
class BuildResult:
    """What a builder reports after writing its file."""

    tensorrt: str
    gpu: str
    compute_capability: str
    warnings: tuple[str, ...]
    seconds: float
    timing_cache: Optional[bytes] = None  # the updated cache (None: the route keeps its own)


class Builder(Protocol):
    def __call__(self, job: BuildJob, spec, out: Path, timing_cache: Optional[bytes]) -> BuildResult: ...


def output_name(graph: str, precision: str, route: Route) -> str:
    return f"{graph}.{precision}{FORMAT_SUFFIX[ROUTE_FORMAT[route]]}"


def plan_builds(manifest: Manifest, cfg: EngineConfig) -> list[BuildJob]:
    """What to build, checked before anything is built: graphs, source files, profiles, plugins."""
    graphs = list(cfg.graphs or manifest.graphs)
    missing = sorted(set(graphs) - set(manifest.graphs))
    if missing:
        raise InputError(f"--graphs: {missing} not in {manifest.directory} (it has {', '.join(manifest.graphs)})")
    plan = parse_precision(cfg.precision, manifest.graphs)
    profiles = profiles_from(cfg.shapes)
    jobs = []
    for graph in graphs:
        precision = plan[graph]
        source = None
        if cfg.route == "tensorrt":
            source = manifest.artifact(graph, "onnx", precision)  # hash-checked, with its external data
            check_plugins(graph, plugin_ops_in(source.path), cfg)
        elif precision not in ("fp32", "fp16"):
            raise InputError(f"--route torch-tensorrt builds fp32 or fp16 (autocast) programs, not {precision}; use "
                             f"--route tensorrt with the {precision} ONNX (Q/DQ) graph")
        job = BuildJob(graph, precision, source, output_name(graph, precision, cfg.route), profiles, cfg.plugins)
        job.profile_shapes(manifest.graphs[graph].spec)  # every dim has a range: fail now, not after a build
        jobs.append(job)
    return jobs


def plugin_ops_in(path: str | Path) -> set[str]:
    """The cmpf plugin ops (custom-domain nodes) an ONNX file uses."""
    import onnx  # noqa: PLC0415

    model = onnx.load(str(path), load_external_data=False)
    return {n.op_type for n in model.graph.node if n.domain == PLUGIN_NAMESPACE}


def check_plugins(graph: str, used: set[str], cfg: EngineConfig) -> None:
    missing = sorted(used - set(cfg.plugins))
    if missing:
        raise InputError(f"graph {graph} uses cmpf plugins {missing} (exported with --plugins); build it with "
                         f"--plugins {','.join(sorted(used | set(cfg.plugins)))}")


def network_flags(flags, plugins: tuple[str, ...]) -> int:
    """The ``create_network`` bitmask: strongly typed (required on 10.x, the only mode on 11.x), and the AOT
    implementation of a plugin that has both (the engine then runs without Python)."""
    mask = 1 << int(flags.STRONGLY_TYPED)
    if plugins:
        mask |= 1 << int(flags.PREFER_AOT_PYTHON_PLUGINS)
    return mask


def workspace_bytes(gb: float) -> int:
    return int(gb * 2 ** 30)


def check_tensorrt_version(version: str) -> None:
    """Refuse TensorRT releases before 10.12 (no compatibility shims for older APIs)."""
    from cmpf.errors import MissingDependency

    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_TENSORRT:
        raise MissingDependency(f"TensorRT {version} is too old: cmpf builds strongly typed engines with TensorRT "
                                f">= {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]}; pip install 'tensorrt>=10.12'")


def parser_error_lines(errors) -> list[str]:
    """TensorRT ``ParserError``s (``node_name``, ``node_operator``, ``desc``) → one line each."""
    lines = []
    for e in errors:
        node = e.node_name() or f"node #{e.node()}"
        lines.append(f"{node} ({e.node_operator()}): {' '.join(e.desc().split())}")
    return lines


def engine_recipe(job: BuildJob, result: BuildResult, manifest: Manifest, cfg: EngineConfig) -> EngineRecipe:
    if job.source is not None:
        source = Path(job.source.path).name
        digest = manifest.files[source]
    else:
        source, digest = (manifest.weights.path, manifest.weights.sha256) if manifest.weights else ("", "")
    builder = {"strongly_typed": True, "opt_level": cfg.opt_level, "workspace_gb": cfg.workspace_gb,
               "timing_cache": cfg.timing_cache, "plugins": list(job.plugins)}
    return EngineRecipe(
        tensorrt=result.tensorrt, gpu=result.gpu, compute_capability=result.compute_capability, source=source,
        source_sha256=digest, precision=job.precision, profiles=tuple(p.to_json() for p in job.profiles),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(result.seconds, 3), builder=builder, warnings=result.warnings,
        command=cfg.command((job.graph,), job.precision), route=cfg.route)


def build_engines(cfg: EngineConfig, builder: Optional[Builder] = None,
                  programs: Optional[Callable[[str], object]] = None) -> Path:
    """Build every planned file into ``cfg.artifacts``; returns the updated manifest's path.

    Args:
        builder: the function that builds one file (default: TensorRT's, or Torch-TensorRT's for that
            route); the tests pass a fake.
        programs: graph name → ``torch.export`` program, for ``route="torch-tensorrt"``.
    """
    manifest = Manifest.read(cfg.artifacts)
    jobs = plan_builds(manifest, cfg)
    if builder is None:
        builder = default_builder(cfg, programs)
    cache_path = Path(cfg.timing_cache) if cfg.timing_cache else None
    timing_cache = cache_path.read_bytes() if cache_path and cache_path.is_file() else None
    added: dict[str, dict[str, GraphFile]] = {}
    hashes: dict[str, str] = {}
    with Staging(last=(MANIFEST_NAME,)) as stage:
        staged = stage.directory(cfg.artifacts, "--artifacts")
        for job in jobs:
            result = builder(job, manifest.graphs[job.graph].spec, staged / job.name, timing_cache)
            timing_cache = result.timing_cache if result.timing_cache is not None else timing_cache
            recipe = engine_recipe(job, result, manifest, cfg)
            key = variant_key(ROUTE_FORMAT[cfg.route], job.precision)
            added.setdefault(job.graph, {})[key] = GraphFile(job.name, job.precision, "cuda", recipe=recipe.to_json())
            hashes[job.name] = sha256_file(staged / job.name)
        if cache_path is not None and timing_cache is not None:
            stage.file(cache_path, "--timing-cache").write_bytes(timing_cache)
        manifest.with_files(added, hashes).write(staged)
    return Path(cfg.artifacts) / MANIFEST_NAME


def default_builder(cfg: EngineConfig, programs: Optional[Callable[[str], object]]) -> Builder:
    if cfg.route == "tensorrt":
        from cmpf.engines.tensorrt_build import tensorrt_builder

        return tensorrt_builder(cfg)
    if programs is None:
        raise InputError("--route torch-tensorrt compiles the torch.export programs of the model; give programs")
    from cmpf.engines.torch_tensorrt import torch_tensorrt_builder

    return torch_tensorrt_builder(cfg, programs)
