"""``build_model``: a Fusioner in eval mode, random or loaded strictly from files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from cmpf.fusioner.checkpoint import load_checkpoint
from cmpf.fusioner.config import FusionerConfig, get_config
from cmpf.fusioner.model import Fusioner, build_architecture


def build_model(preset: str | FusionerConfig, checkpoint: Optional[str | Path] = None,
                clip_weights: Optional[str | Path] = None) -> Fusioner:
    """Build a Fusioner in eval mode; random weights without files (tests, ``tiny-fusioner``).

    With a file, loading is strict (``load_checkpoint``); the report is kept as ``model.load_report``.
    """
    cfg = get_config(preset)
    if checkpoint is None and clip_weights is None:
        model = build_architecture(cfg)
        model.load_report = None
        return model
    # no random init (7 s for ViT-L): the strict load below overwrites every tensor, or raises
    with torch.device("meta"):
        model = build_architecture(cfg)
    model = model.to_empty(device="cpu")
    model.load_report = load_checkpoint(model, checkpoint, clip_weights)
    return model.eval()
