"""``cmpf doctor``: what this machine offers (torch/CUDA, the CPU's vector and matrix units, ONNX Runtime
providers, OpenVINO devices, Triton, TensorRT)."""

from __future__ import annotations

import importlib
import importlib.util
import platform
from pathlib import Path

# /proc/cpuinfo flag -> name; what decides which reduced-precision CPU paths run natively
CPU_FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx_vnni", "AVX-VNNI"), ("avx512_vnni", "AVX-512 VNNI"),
                ("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX-BF16"), ("amx_int8", "AMX-INT8"))


def _version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return "not installed"
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # present but broken: say why, do not hide it
        return f"installed but fails to import: {type(e).__name__}: {e}"
    return getattr(mod, "__version__", "installed")


def report() -> list[tuple[str, str]]:
    import torch

    rows = [("python", platform.python_version()), ("platform", platform.platform()),
            ("torch", torch.__version__),
            ("cuda", f"{torch.version.cuda} ({torch.cuda.device_count()} device(s))"
             if torch.cuda.is_available() else "not available"),
            ("cpu threads", str(torch.get_num_threads()))]
    rows.extend(cpu_rows())
    if torch.cuda.is_available():
        rows.append(("gpu", torch.cuda.get_device_name(0)))
    for name in ("open_clip", "segment_anything", "onnx", "onnxruntime", "openvino", "triton", "tensorrt"):
        rows.append((name, _version(name)))
    if importlib.util.find_spec("onnxruntime") is not None:
        try:
            import onnxruntime

            rows.append(("onnxruntime providers", ", ".join(onnxruntime.get_available_providers())))
        except Exception as e:
            rows.append(("onnxruntime providers", f"error: {e}"))
    if importlib.util.find_spec("openvino") is not None:
        rows.extend(_openvino_rows())
    rows.append(("g++ (AOTInductor CPU)", _which("g++")))
    return rows


def cpu_rows(cpuinfo: str | None = None) -> list[tuple[str, str]]:
    """The CPU's model, its AVX2 / AVX-512 / VNNI / BF16 / AMX units (Linux ``/proc/cpuinfo``; ``cpuinfo``: its
    text) and what they mean for ``--precision int8`` and ``bf16``."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)  # the last CPU's lines
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "flags" not in fields:
        return [("cpu", platform.processor() or "unknown"), ("cpu features", "unknown (no /proc/cpuinfo flags)")]
    flags = set(fields["flags"].split())
    have = [name for flag, name in CPU_FEATURES if flag in flags]
    vnni = flags & {"avx_vnni", "avx512_vnni", "amx_int8"}
    bf16 = flags & {"avx512_bf16", "amx_bf16"}
    return [("cpu", fields.get("model name", "unknown")),
            ("cpu features", ", ".join(have) or "none of " + ", ".join(n for _, n in CPU_FEATURES)),
            ("cpu int8", "VNNI / AMX int8 dot products" if vnni else
             "no VNNI or AMX: int8 is no faster than fp32 on such CPUs (SAM ViT-B on an AVX2 EPYC: ONNX Runtime "
             "1.0x, OpenVINO 0.6x; benchmarks/results/sam_int8_cpu_epyc-avx2.md), run fp32"),
            ("cpu bf16", "bf16 kernels (--backend openvino --precision bf16 runs)" if bf16 else
             "no bf16 kernels: --backend openvino --precision bf16 is refused; run fp32 or int8")]


def _openvino_rows() -> list[tuple[str, str]]:
    """OpenVINO's devices and what its CPU plugin can run here (FP32, INT8, BF16, FP16 kernels)."""
    try:
        import openvino

        core = openvino.Core()
        devices = core.available_devices
        rows = [("openvino devices", ", ".join(devices) or "none")]
        if "CPU" in devices:
            rows.append(("openvino CPU capabilities", ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))))
        return rows
    except Exception as e:
        return [("openvino devices", f"error: {e}")]


def _which(cmd: str) -> str:
    import shutil

    return shutil.which(cmd) or "not found"


def print_report() -> None:
    rows = report()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
