"""Fusioner (arXiv 2210.15138), the third model family: reference PyTorch model, strict loader, official inference.

``build_model(preset, checkpoint=..., clip_weights=...)`` → ``Fusioner`` in eval mode;
``segment(model, image, class_names, SegmentOptions(...))`` → ``FusionerSegmentation``;
``graphs.WRAPPERS`` / ``graphs.graph_specs(cfg)`` for export. Above the model (they use ``cmpf.export`` and
``cmpf.runtime``; nothing here imports them): ``export.export_fusioner`` (``cmpf export``),
``run.run_fusioner`` (``cmpf run``), ``parity.fusioner_parity`` (``cmpf parity``), ``bench.bench_fusioner``
(``cmpf bench``), ``evaluate.evaluate_fusioner`` (``cmpf eval``) and ``train.train_fusioner`` (``cmpf train``),
dispatched by ``cmpf.cli`` on the preset or manifest family. Facts: ``shared/docs/FUSIONER_SPEC.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from cmpf.fusioner.checkpoint import CheckpointError, LoadReport, load_checkpoint
from cmpf.fusioner.config import PRESETS, FusionerConfig, SegmentOptions, get_config
from cmpf.fusioner.inference import FusionerSegmentation, TextEmbeddingCache, segment
from cmpf.fusioner.model import Fusioner, build_architecture
from cmpf.fusioner.prompts import FusionerInputError


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


__all__ = [
    "build_model", "Fusioner", "FusionerConfig", "PRESETS", "get_config", "SegmentOptions", "segment",
    "FusionerSegmentation", "TextEmbeddingCache", "FusionerInputError", "CheckpointError", "LoadReport",
    "load_checkpoint",
]
