"""Official detectron2 checkpoints → model state, with shape checks and a report by group.

Reads ``{"model": state_dict, ...}`` or a bare state dict (``module.`` prefixes stripped) with
``torch.load(weights_only=True)``: a checkpoint never runs code. Frozen CLIP / SAM weights come from
the checkpoint when present, else from an open_clip weights file and the official SAM ``.pth``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from cmpf.errors import InputError
from cmpf.io import is_torchscript_archive

GROUPS = {"clip": "backbone.clip_model.", "sam": "sam.", "head": "sem_seg_head.", "void": "void_embedding."}
# keys the official checkpoints carry that the model has no use for
IGNORED_PREFIXES = ("criterion.",)


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded into this model, with the reason."""


def group_of(key: str) -> str:
    for name, prefix in GROUPS.items():
        if key.startswith(prefix):
            return name
    return "other"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file safely; unwrap ``{"model": ...}`` and strip ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, not a torch file ...
        if is_torchscript_archive(path):
            # OpenAI's RN50x64.pt (the official 'openai' CLIP weights) is a TorchScript archive; only
            # its tensors are read (no Python pickle is unpickled)
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        reason = (str(e).strip().splitlines() or [""])[0][:200]  # torch's messages run to many lines
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {reason}); "
                              f"give the official .pth state dict") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (or {{'model': state_dict}})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}



@dataclass
class LoadReport:
    loaded: dict[str, int] = field(default_factory=dict)  # group → number of tensors
    missing: dict[str, list[str]] = field(default_factory=dict)
    unexpected: dict[str, list[str]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # group → file it came from
    loaded_keys: set[str] = field(default_factory=set)

    def summary(self) -> str:
        lines = []
        for g in sorted(set(self.loaded) | set(self.missing) | set(self.unexpected)):
            src = f" from {self.sources[g]}" if g in self.sources else ""
            lines.append(f"  {g:5s} loaded {self.loaded.get(g, 0):5d}{src}; missing {len(self.missing.get(g, []))}; "
                         f"unexpected {len(self.unexpected.get(g, []))}")
            for kind, keys in (("missing", self.missing.get(g, [])), ("unexpected", self.unexpected.get(g, []))):
                if keys:
                    lines.append(f"        {kind}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        return "\n".join(lines)


def _add(report_dict: dict[str, list[str]], key: str) -> None:
    report_dict.setdefault(group_of(key), []).append(key)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], report: LoadReport, source: str,
              prefix: str = "") -> None:
    """Copy matching tensors (keys under ``prefix`` in the model) with shape checks."""
    own = model.state_dict()
    wrong_shape = []
    for key, value in state.items():
        full = prefix + key
        if full not in own:
            if not full.startswith(IGNORED_PREFIXES):
                _add(report.unexpected, full)
            continue
        if own[full].shape != value.shape:
            wrong_shape.append(f"{full}: checkpoint {tuple(value.shape)} vs model {tuple(own[full].shape)}")
            continue
        with torch.no_grad():
            own[full].copy_(value)
        g = group_of(full)
        if full not in report.loaded_keys:
            report.loaded[g] = report.loaded.get(g, 0) + 1
            report.loaded_keys.add(full)
        report.sources.setdefault(g, source)
    if wrong_shape:
        raise CheckpointError(
            f"{source}: {len(wrong_shape)} tensors do not fit this model (is it a checkpoint of another "
            f"model?), e.g. {wrong_shape[0]}" + ("" if len(wrong_shape) == 1 else f"; {wrong_shape[1]}")
        )


def load_checkpoints(model: nn.Module, checkpoint: Optional[str | Path], clip_weights: Optional[str | Path] = None,
                     sam_weights: Optional[str | Path] = None) -> LoadReport:
    """Overlay the frozen-weight files, then the official checkpoint; require every needed group.

    ``clip_weights``: an open_clip state dict for the CLIP model (keys without ``backbone.clip_model.``);
    ``sam_weights``: the official ``sam_vit_b_01ec64.pth`` (keys without ``sam.``).
    """
    report = LoadReport()
    if clip_weights is not None:
        load_into(model, read_state_dict(clip_weights), report, str(clip_weights), GROUPS["clip"])
    if sam_weights is not None:
        load_into(model, read_state_dict(sam_weights), report, str(sam_weights), GROUPS["sam"])
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        load_into(model, state, report, str(checkpoint))
    own_groups: dict[str, list[str]] = {}
    for key in model.state_dict():
        own_groups.setdefault(group_of(key), []).append(key)
    for g, keys in own_groups.items():
        missing = [k for k in keys if k not in report.loaded_keys]
        if missing:
            report.missing[g] = missing
    files = ", ".join(str(f) for f in (checkpoint, clip_weights, sam_weights) if f is not None) or "no weight files"
    _check_required(model, report, files, own_groups)
    return report


def _check_required(model, report, files: str, own_groups) -> None:
    problems = []
    for g, keys in own_groups.items():
        n = report.loaded.get(g, 0)
        if n == len(keys):
            continue
        if n == 0:
            hint = {"clip": "pass --clip-weights (open_clip weights) or a checkpoint containing backbone.clip_model.*",
                    "sam": "pass --sam-weights (sam_vit_b_01ec64.pth) or a checkpoint containing sam.*",
                    "head": "the checkpoint has no sem_seg_head.* keys: is it a CMPF/FC-CLIP checkpoint?",
                    "void": "the checkpoint has no void_embedding.weight"}.get(g, "")
            problems.append(f"group '{g}' is absent ({len(keys)} tensors): {hint}")
        else:
            hint = {"clip": " (FC-CLIP releases lack the CLIP text tower: pass --clip-weights)",
                    "sam": " (pass --sam-weights sam_vit_b_01ec64.pth)"}.get(g, "")
            problems.append(f"group '{g}' is incomplete: {len(keys) - n} of {len(keys)} tensors missing{hint}")
    # the CLIP text tower may be absent (FC-CLIP releases lack it) when text embeddings are supplied
    # separately; we still require it here because the model encodes vocabularies itself.
    if problems:  # one line; the per-group report is printed before it (``CmpfError.details``)
        raise CheckpointError(f"cannot load {files}: " + "; ".join(problems),
                              details="weights:\n" + report.summary())
