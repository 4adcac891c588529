"""The TensorRT-calling layer of ``cmpf build``: one verified ONNX file → one serialized engine file.

Consumes a ``BuildJob`` (source ONNX, optimisation profiles, plugins) and its ``GraphSpec``; produces
the ``.engine`` file and a ``BuildResult`` (versions, GPU, the builder log's warnings, the updated
timing cache). Top to bottom, like mmdeploy's ``from_onnx``: register the plugins → a strongly typed
network → ``OnnxParser.parse_from_file`` (external data read beside the file; every parser error
collected into the exception) → builder config (workspace pool limit, optimisation level, timing
cache) → one optimisation profile per declared range → ``build_serialized_network``. No precision
flags and no calibrator: precision comes from the casts and Q/DQ nodes in the ONNX graph. TensorRT is
imported when a build starts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from cmpf.engines.build import (BuildJob, BuildResult, EngineConfig, check_tensorrt_version, network_flags,
                                parser_error_lines, workspace_bytes)
from cmpf.errors import CheckFailed, EnvironmentProblem, InputError, require
from cmpf.io import write_bytes


def tensorrt_builder(cfg: EngineConfig):
    """The builder function of ``build_engines`` for ``route="tensorrt"``."""
    trt = require("tensorrt", "trt", "cmpf build")
    check_tensorrt_version(trt.__version__)

    def build(job: BuildJob, spec, out: Path, timing_cache: Optional[bytes]) -> BuildResult:
        return build_engine(trt, job, spec, out, timing_cache, cfg)

    return build


def _logger(trt):
    class CollectingLogger(trt.ILogger):
        """TensorRT's log: warnings and errors kept for the manifest and the error message."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.warnings: list[str] = []
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(" ".join(str(msg).split()))
            elif severity == trt.ILogger.Severity.WARNING:
                self.warnings.append(" ".join(str(msg).split()))

    return CollectingLogger()


def build_engine(trt, job: BuildJob, spec, out: Path, timing_cache: Optional[bytes], cfg: EngineConfig) -> BuildResult:
    import torch

    device = torch.device(cfg.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise EnvironmentProblem(f"cmpf build needs a CUDA GPU (--device {cfg.device}); torch sees "
                                 f"{torch.cuda.device_count()} CUDA device(s)")
    if job.plugins:
        from cmpf.engines.plugins import register_tensorrt_plugins

        register_tensorrt_plugins()
    logger = _logger(trt)
    source = Path(job.source.path)
    with torch.cuda.device(device):
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt.NetworkDefinitionCreationFlag, job.plugins))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            lines = parser_error_lines(parser.get_error(i) for i in range(parser.num_errors))
            raise InputError(f"{source}: TensorRT {trt.__version__}'s ONNX parser refused {len(lines)} node(s), first "
                             f"{lines[0] if lines else 'unknown'}; run `cmpf doctor --onnx {source}` for every "
                             f"finding", details="\n".join(lines))
        inputs = [network.get_input(i).name for i in range(network.num_inputs)]
        if sorted(inputs) != sorted(spec.input_names):
            raise InputError(f"{source}: network inputs {inputs} are not the {spec.name} spec's {spec.input_names}; "
                             f"re-export the graph")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes(cfg.workspace_gb))
        config.builder_optimization_level = cfg.opt_level
        cache = config.create_timing_cache(timing_cache or b"")
        config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache from another GPU is not reused
        for shapes in job.profile_shapes(spec):
            profile = builder.create_optimization_profile()
            for name, (low, opt, high) in shapes.items():
                profile.set_shape(name, low, opt, high)
            config.add_optimization_profile(profile)
        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - start
        if serialized is None:
            last = (logger.errors or ["no error logged"])[-1]
            raise CheckFailed(f"{source}: TensorRT could not build the engine ({last}); see the log above",
                              details="\n".join(logger.errors))
        write_bytes(out, bytes(serialized))
        updated = bytes(config.get_timing_cache().serialize())
        major, minor = torch.cuda.get_device_capability(device)
        gpu = torch.cuda.get_device_name(device)
    return BuildResult(trt.__version__, gpu, f"{major}.{minor}", tuple(logger.warnings), seconds, updated)
