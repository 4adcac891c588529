"""The Torch-TensorRT route of ``cmpf build``: a graph's ``torch.export`` program → ``<graph>.<precision>.ts``.

Consumes the exported program of one graph (rebuilt from the directory's recorded weights by the
caller; this package never imports the model) and a ``BuildJob``; produces a TorchScript file whose
TensorRT engines Torch-TensorRT embedded (``torch_tensorrt.dynamo.compile`` then
``torch_tensorrt.save(output_format="torchscript")``), for users who stay in PyTorch. Explicit typing
as on the ONNX route; fp16 through Torch-TensorRT's autocast (norms and reductions stay fp32 by its
rules). Torch-TensorRT takes one min/opt/max range per input, so this route builds one profile.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from cmpf.engines.build import BuildJob, BuildResult, EngineConfig, workspace_bytes
from cmpf.errors import EnvironmentProblem, InputError, require


def torch_tensorrt_builder(cfg: EngineConfig, programs: Callable[[str], object]):
    """The builder function of ``build_engines`` for ``route="torch-tensorrt"``."""
    torch_trt = require("torch_tensorrt", "trt", "cmpf build --route torch-tensorrt")

    def build(job: BuildJob, spec, out: Path, timing_cache: Optional[bytes]) -> BuildResult:
        return compile_program(torch_trt, programs(job.graph), job, spec, out, cfg)

    return build


def compile_settings(job: BuildJob, cfg: EngineConfig) -> dict:
    """Keyword arguments of ``torch_tensorrt.dynamo.compile`` for one job (besides the inputs)."""
    import torch

    settings = {"use_explicit_typing": True, "optimization_level": cfg.opt_level,
                "workspace_size": workspace_bytes(cfg.workspace_gb), "min_block_size": 1, "device": cfg.device}
    if cfg.timing_cache:
        settings["timing_cache_path"] = str(cfg.timing_cache)
    if job.precision == "fp16":
        settings.update(enable_autocast=True, autocast_low_precision_type=torch.float16)
    return settings


def compile_ranges(job: BuildJob, spec) -> list[tuple[str, tuple, tuple, tuple, object]]:
    """(name, min, opt, max, dtype) per input, in the spec's order; one profile only on this route."""
    if len(job.profiles) != 1:
        raise InputError(f"--route torch-tensorrt builds one optimisation profile; {len(job.profiles)} --shapes were "
                         f"given (use --route tensorrt for several)")
    shapes = job.profile_shapes(spec)[0]
    return [(t.name, *shapes[t.name], t.torch_dtype) for t in spec.inputs]


def compile_program(torch_trt, program, job: BuildJob, spec, out: Path, cfg: EngineConfig) -> BuildResult:
    import tensorrt
    import torch

    device = torch.device(cfg.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise EnvironmentProblem(f"cmpf build --route torch-tensorrt needs a CUDA GPU (--device {cfg.device})")
    ranges = compile_ranges(job, spec)
    inputs = [torch_trt.Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=dtype, name=name)
              for name, lo, opt, hi, dtype in ranges]
    start = time.perf_counter()
    module = torch_trt.dynamo.compile(program, arg_inputs=inputs, **compile_settings(job, cfg))
    seconds = time.perf_counter() - start
    example = [torch.zeros(opt, dtype=dtype, device=device) for _, _, opt, _, dtype in ranges]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".ts")
    os.close(fd)
    try:
        torch_trt.save(module, tmp, output_format="torchscript", arg_inputs=example)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    major, minor = torch.cuda.get_device_capability(device)
    return BuildResult(tensorrt.__version__, torch.cuda.get_device_name(device), f"{major}.{minor}", (), seconds)
