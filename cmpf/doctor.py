"""``cmpf doctor``: what this machine offers (torch/CUDA, the CPU's vector and matrix units, ONNX Runtime
providers, OpenVINO devices, Triton, TensorRT)."""

from __future__ import annotations

import importlib
import importlib.util
import platform

from cmpf.cpu import FEATURES, WITHOUT_INT8_UNITS, cpu_info


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
    cpu = cpu_info(cpuinfo)
    if cpu.flags is None:
        return [("cpu", cpu.model), ("cpu features", "unknown (no /proc/cpuinfo flags)")]
    return [("cpu", cpu.model),
            ("cpu features", ", ".join(cpu.features) or "none of " + ", ".join(n for _, n in FEATURES)),
            ("cpu int8", "VNNI / AMX int8 dot products" if cpu.int8_dot_products else WITHOUT_INT8_UNITS),
            ("cpu bf16", "bf16 kernels (--backend openvino --precision bf16 runs)" if cpu.bf16_units else
             "no bf16 kernels: --backend openvino --precision bf16 is refused; run fp32"
             + (" or int8" if cpu.int8_dot_products else ""))]


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
