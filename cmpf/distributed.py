"""Joining a ``torchrun`` process group (training and dataset evaluation share this).

Under ``torchrun`` (``WORLD_SIZE > 1``) each rank joins the default group: NCCL on CUDA devices,
gloo on CPU (how the tests run two processes). Without ``torchrun`` nothing is initialised.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from cmpf.errors import EnvironmentProblem


def init_distributed(device: str) -> tuple[bool, torch.device]:
    """Pick this rank's device and join the process group when ``WORLD_SIZE > 1``.

    Args:
        device: ``cpu``, ``cuda`` (becomes ``cuda:LOCAL_RANK``), ``cuda:N``, or ``auto`` (CUDA if available).
    Returns:
        (whether this call created the group, the device).
    """
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise EnvironmentProblem(f"--device {device}: no CUDA device is available; use --device cpu")
        index = torch.device(device).index if device.startswith("cuda") else None
        if index is None:
            index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)  # before NCCL initialises; its object collectives use it
        chosen = torch.device("cuda", index)
    else:
        chosen = torch.device("cpu")
    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    return created, chosen


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
