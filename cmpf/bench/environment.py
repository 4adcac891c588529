"""The machine a benchmark ran on: CPU model and cores, GPU and driver, library versions, load.

Timings mean little without it: the load average at start says whether other work shared the cores.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from importlib import metadata
from typing import Optional

import torch

LIBRARIES = ("cmpf", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "openvino", "numpy", "triton", "tensorrt",
             "torch-tensorrt", "matplotlib")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def gpu(device: str | torch.device) -> Optional[dict]:
    """Name, memory and driver of a CUDA ``device`` (None on CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    driver = None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return {"name": props.name, "memory_gib": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda, "driver": driver}


def environment(device: str | torch.device = "cpu") -> dict:
    """The JSON environment block of a bench report."""
    return {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu(device), "device": str(device), "platform": platform.platform(),
            "python": platform.python_version(), "versions": {n: _version(n) for n in LIBRARIES},
            "load_average_1_5_15min": list(os.getloadavg())}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; ``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_device(device: str | torch.device) -> None:
    """Start a new device-memory peak (CUDA; nothing elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_device_mib(device: str | torch.device) -> Optional[float]:
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
