"""Fusioner checkpoints → model weights, strict, with a report by parameter group.

The official layout is ``torch.save({"model": FullModel.state_dict()})``, loaded with ``strict=True``
(``FU:model/__init__.py:50-53``): 615 tensors including the frozen CLIP towers. A checkpoint holding
only ``fusion.*`` / ``decoder.*`` works when the CLIP weights are given separately, as OpenAI's
``ViT-L-14.pt`` or an open_clip ``ViT-L-14-quickgelu`` state dict (``visual.X`` → ``img_model.X``,
every other key ``X`` → ``text_model.X``, ``FU:model/full_model.py:65-77``); the checkpoint's tensors
win where both have a key. Files are read with ``torch.load(weights_only=True)`` (no pickled code),
or safetensors; OpenAI's TorchScript CLIP archive is read for its tensors only.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from cmpf.errors import InputError
from cmpf.io import is_torchscript_archive

GROUPS = {"clip_text": "text_model.", "clip_image": "img_model.", "fusion": "fusion.", "decoder": "decoder."}
# non-tensor metadata that OpenAI's CLIP archives store next to the weights (``CL:clip/model.py::build_model``)
OPENAI_CLIP_EXTRAS = ("input_resolution", "context_length", "vocab_size")
_FIX = {
    "clip_text": "pass the CLIP weights separately (clip_weights=ViT-L-14.pt) or use a checkpoint with text_model.*",
    "clip_image": "pass the CLIP weights separately (clip_weights=ViT-L-14.pt) or use a checkpoint with img_model.*",
    "fusion": "the checkpoint has no fusion.* tensors: is it a Fusioner checkpoint?",
    "decoder": "the checkpoint has no decoder.* tensors: is it a Fusioner checkpoint?",
}


class CheckpointError(InputError):
    """A weight file that cannot be loaded; the message is one line naming the file and the fix.

    ``report`` holds the per-group ``LoadReport`` when the files were readable.
    """

    def __init__(self, message: str, report: Optional["LoadReport"] = None):
        super().__init__(message)
        self.report = report


def group_of(key: str) -> str:
    for name, prefix in GROUPS.items():
        if key.startswith(prefix):
            return name
    return "other"


@dataclass(frozen=True)
class GroupReport:
    expected: int  # tensors the model has in this group
    loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    wrong_shape: tuple[str, ...]  # "key: file (a, b) vs model (c, d)"
    sources: tuple[str, ...]  # files the loaded tensors came from


@dataclass(frozen=True)
class LoadReport:
    groups: dict[str, GroupReport]

    @property
    def ok(self) -> bool:
        return all(not (g.missing or g.unexpected or g.wrong_shape) for g in self.groups.values())

    def summary(self) -> str:
        """One line per group, plus the first few problem keys."""
        lines = []
        for name, g in self.groups.items():
            src = f" from {', '.join(g.sources)}" if g.sources else ""
            lines.append(f"{name:10s} loaded {g.loaded:4d}/{g.expected:<4d}{src}; missing {len(g.missing)}; "
                         f"unexpected {len(g.unexpected)}; wrong shape {len(g.wrong_shape)}")
            for kind, keys in (("missing", g.missing), ("unexpected", g.unexpected), ("wrong shape", g.wrong_shape)):
                if keys:
                    lines.append(f"    {kind}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load one weight file safely; unwrap ``{"model": ...}`` / ``{"state_dict": ...}``, strip ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    elif is_torchscript_archive(path):
        # OpenAI's ViT-L-14.pt (what ``clip.load`` reads) is a TorchScript archive: read its tensors only
        obj = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as e:
            if "Unsupported global" not in str(e):  # garbage bytes also fail in the weights-only unpickler
                raise CheckpointError(f"{path}: not a readable PyTorch file (UnpicklingError); check that it "
                                      f"is a complete torch.save file") from None
            raise CheckpointError(f"{path}: holds pickled Python objects besides tensors, which weights-only "
                                  f"loading refuses; re-save it as torch.save({{'model': model.state_dict()}})"
                                  ) from None
        except Exception as e:  # truncated file, not a torch file ...
            raise CheckpointError(f"{path}: not a readable PyTorch file ({type(e).__name__}); check that it is a "
                                  f"complete torch.save file") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors or {{'model': state_dict}}; "
                              f"re-save it as torch.save({{'model': model.state_dict()}})")
    return {k.removeprefix("module."): v for k, v in obj.items()}



def clip_to_fusioner_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI / open_clip CLIP keys → Fusioner keys (``visual.X`` → ``img_model.X``, ``X`` → ``text_model.X``).

    Keys already under ``img_model.`` / ``text_model.`` are kept as they are.
    """
    out = {}
    for key, value in state.items():
        if key in OPENAI_CLIP_EXTRAS:
            continue
        if key.startswith((GROUPS["clip_image"], GROUPS["clip_text"])):
            out[key] = value
        elif key.startswith("visual."):
            out[GROUPS["clip_image"] + key.removeprefix("visual.")] = value
        else:
            out[GROUPS["clip_text"] + key] = value
    return out


def _merge(checkpoint, clip_weights) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors of both files (the checkpoint wins) and the file each key came from."""
    merged, sources = {}, {}
    files = []
    if clip_weights is not None:
        files.append((str(clip_weights), clip_to_fusioner_keys(read_state_dict(clip_weights))))
    if checkpoint is not None:
        files.append((str(checkpoint), read_state_dict(checkpoint)))
    for source, state in files:
        merged.update(state)
        sources.update(dict.fromkeys(state, source))
    return merged, sources


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], sources: dict[str, str]) -> LoadReport:
    """Compare a state dict with the model's keys and shapes, by group; never raises."""
    own = model.state_dict()
    names = list(GROUPS) + (["other"] if any(group_of(k) == "other" for k in list(own) + list(state)) else [])
    groups = {}
    for name in names:
        own_keys = [k for k in own if group_of(k) == name]
        wrong = tuple(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in own_keys if k in state and state[k].shape != own[k].shape)
        loaded = [k for k in own_keys if k in state and state[k].shape == own[k].shape]
        groups[name] = GroupReport(
            expected=len(own_keys), loaded=len(loaded),
            missing=tuple(k for k in own_keys if k not in state),
            unexpected=tuple(k for k in state if group_of(k) == name and k not in own),
            wrong_shape=wrong,
            sources=tuple(dict.fromkeys(sources[k] for k in loaded)),
        )
    return LoadReport(groups)


def _problem(report: LoadReport) -> str:
    """The first problem of a failed report, as '<group>: <what>; <fix>'."""
    for name, g in report.groups.items():
        if g.wrong_shape:
            return (f"{len(g.wrong_shape)} {name} tensors do not fit this model, e.g. {g.wrong_shape[0]}; "
                    f"is it a checkpoint of another preset?")
        if g.unexpected:
            return (f"{len(g.unexpected)} unexpected {name} keys, e.g. {g.unexpected[0]}; "
                    f"is it a checkpoint of another model?")
    for name, g in report.groups.items():
        if g.missing:
            what = "absent" if g.loaded == 0 else f"incomplete ({len(g.missing)} of {g.expected} missing, e.g. " \
                                                  f"{g.missing[0]})"
            return f"group {name} is {what}; {_FIX.get(name, 'check the file')}"
    return "no problem"


def load_checkpoint(model: nn.Module, checkpoint: Optional[str | Path] = None,
                    clip_weights: Optional[str | Path] = None) -> LoadReport:
    """Load the official layout strictly into ``model`` (every key present, none unexpected, shapes equal).

    Args:
        checkpoint: ``{"model": state_dict}`` (or a bare state dict) with Fusioner keys.
        clip_weights: optional OpenAI / open_clip CLIP weights for the frozen towers.
    Raises:
        CheckpointError: one line naming the file(s) and the fix; ``err.report`` has the details.
    """
    if checkpoint is None and clip_weights is None:
        raise CheckpointError("no weight file given; pass a Fusioner checkpoint (and optionally clip_weights)")
    state, sources = _merge(checkpoint, clip_weights)
    report = check_state_dict(model, state, sources)
    if not report.ok:
        files = " + ".join(str(f) for f in (clip_weights, checkpoint) if f is not None)
        raise CheckpointError(f"{files}: cannot load into {type(model).__name__}: {_problem(report)}", report)
    model.load_state_dict(state, strict=True)
    return report
