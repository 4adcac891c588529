"""Training checkpoints: save (atomically) and resume.

A checkpoint is a ``torch.save`` dict readable with ``weights_only=True``:

- ``model``: the trainable modules' state in the official key naming (``sem_seg_head.*``,
  ``void_embedding.weight``), so ``cmpf run`` / ``cmpf export`` load it like a detectron2 file;
- ``optimizer``, ``scheduler``, ``scaler`` (AMP), ``iteration`` (iterations done);
- ``rng``: the torch (CPU and CUDA), numpy and Python RNG states of every rank;
- ``config``: the resolved ``TrainConfig`` as a dict.

Files are ``checkpoint_{iteration:07d}.pth`` plus ``last_checkpoint`` (the newest file's name), as
detectron2's ``PeriodicCheckpointer`` writes; each is written to a temporary file and renamed.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from cmpf.io import torch_save, write_text

LAST_CHECKPOINT = "last_checkpoint"


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State of the top-level modules that hold trainable parameters (official key names).

    With CMPF this is everything under ``sem_seg_head`` (parameters and persistent buffers) plus
    ``void_embedding.weight``; the frozen CLIP and SAM weights are left out.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    prefixes = tuple(sorted({n.split(".", 1)[0] + "." for n in names}))
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}


def rng_state() -> dict[str, Any]:
    """This process's RNG states, as tensors and plain Python values (``weights_only``-safe)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [py_version, list(py_internal), py_gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_path(out_dir: Union[str, os.PathLike], iteration: int) -> Path:
    return Path(out_dir) / f"checkpoint_{iteration:07d}.pth"


def save_checkpoint(out_dir: Union[str, os.PathLike], iteration: int, state: dict[str, Any]) -> Path:
    """Write ``state`` as the checkpoint of ``iteration`` and point ``last_checkpoint`` at it."""
    path = torch_save({**state, "iteration": iteration}, checkpoint_path(out_dir, iteration))
    write_text(Path(out_dir) / LAST_CHECKPOINT, path.name)
    return path


def last_checkpoint(out_dir: Union[str, os.PathLike]) -> Optional[Path]:
    """The checkpoint ``last_checkpoint`` names, or None when there is none.

    Raises:
        FileNotFoundError: ``last_checkpoint`` names a file that does not exist.
    """
    marker = Path(out_dir) / LAST_CHECKPOINT
    if not marker.is_file():
        return None
    path = Path(out_dir) / marker.read_text().strip()
    if not path.is_file():
        raise FileNotFoundError(f"{marker} names {path}, which does not exist")
    return path


def load_checkpoint(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Read a training checkpoint onto the CPU (no code execution: ``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`trainable_state_dict` into ``model``; every trainable key must be present.

    Raises:
        KeyError: the state misses or adds keys of the trainable modules.
    """
    expected = trainable_state_dict(model).keys()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise KeyError(f"trainable state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)
