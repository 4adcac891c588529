"""``cmpf doctor``: what this machine offers (torch/CUDA, ONNX Runtime providers, OpenVINO devices, Triton,
TensorRT)."""

from __future__ import annotations

import importlib
import importlib.util
import platform


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
