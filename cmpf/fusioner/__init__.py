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

from cmpf.lazy import lazy_attributes

# name -> module: imported on first use (PEP 562), so that reading the presets (`cmpf train --help`)
# does not import torch and open_clip
_HOMES = {
    "build_model": "cmpf.fusioner.build",
    **dict.fromkeys(("CheckpointError", "LoadReport", "load_checkpoint"), "cmpf.fusioner.checkpoint"),
    **dict.fromkeys(("PRESETS", "FusionerConfig", "SegmentOptions", "get_config"), "cmpf.fusioner.config"),
    **dict.fromkeys(("FusionerSegmentation", "TextEmbeddingCache", "segment"), "cmpf.fusioner.inference"),
    **dict.fromkeys(("Fusioner", "build_architecture"), "cmpf.fusioner.model"),
    "FusionerInputError": "cmpf.fusioner.prompts",
}
__all__ = sorted(_HOMES)

__getattr__, __dir__ = lazy_attributes(__name__, _HOMES)
