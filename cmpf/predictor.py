"""The one answer to "which runners, which model, which vocabulary": ``load_predictor``.

A ``ModelSource`` says where the model comes from (a preset with weight files, or an artifact
directory); a ``Backend`` says what runs it. ``load_predictor`` turns the pair into a
``Predictor``: the graph runners, the model config, the default inference options and vocabulary
(from the preset, or recorded in the artifacts' manifest) and a text-classifier cache that lives
as long as the predictor. ``cmpf run``, ``eval``, ``bench``, ``parity`` and ``demo`` all call it; a
request a source cannot satisfy is an ``InputError`` naming the fix, never a quiet fallback.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import torch

from cmpf.backend import Backend
from cmpf.config import InferenceOptions, ModelConfig, default_options
from cmpf.errors import InputError
from cmpf.manifest import Manifest
from cmpf.pipeline import PipelineResult, segment
from cmpf.runtime.base import Runner
from cmpf.text import TextCache, TextClassifier
from cmpf.vocabulary import Vocabulary


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: ``model`` (a preset) with weight files, or ``artifacts`` (a directory)."""

    model: Optional[str] = None
    checkpoint: Optional[str] = None
    clip_weights: Optional[str] = None
    sam_weights: Optional[str] = None
    artifacts: Optional[str] = None
    precision: Optional[str] = None  # artifacts only: 'int8' or 'sam_image_encoder=int8,decoder=fp16'

    def __post_init__(self) -> None:
        files = [f for f, v in (("--checkpoint", self.checkpoint), ("--clip-weights", self.clip_weights),
                                ("--sam-weights", self.sam_weights)) if v]
        if self.artifacts and files:
            raise InputError(f"--artifacts {self.artifacts} carries its own weights; drop {', '.join(files)} "
                             f"(or drop --artifacts to run the eager model from those files)")
        if not self.artifacts and not self.model:
            raise InputError("no model: give --model PRESET (with --checkpoint CKPT) or --artifacts DIR")
        if self.precision and self.precision != "fp32" and not self.artifacts:
            raise InputError(f"--precision {self.precision} runs reduced-precision files of an artifact directory; "
                             f"give --artifacts DIR (made by `cmpf export` then `cmpf quantize`)")

    @property
    def default_backend(self) -> Backend:
        return Backend.ONNXRUNTIME if self.artifacts else Backend.TORCH


class Predictor:
    """Runners + model config + defaults, with a text cache shared by every call."""

    def __init__(self, runners: Mapping[str, Runner], cfg: ModelConfig, backend: Backend, *,
                 options: Optional[InferenceOptions] = None, vocabulary: Optional[Vocabulary] = None,
                 load_report=None, device: str | torch.device = "cpu"):
        self.runners, self.cfg, self.backend = dict(runners), cfg, backend
        self.options = options or default_options(cfg)
        self.vocabulary = vocabulary  # the default vocabulary (an export's), or None
        self.load_report = load_report  # cmpf.model.LoadReport of an eager model built from files
        self.device = device
        self.text_cache = TextCache(self.runners["text_encoder"], self.options.text_batch)

    def resolve_vocabulary(self, vocabulary: Optional[Vocabulary]) -> Vocabulary:
        if vocabulary is not None:
            return vocabulary
        if self.vocabulary is None:
            raise InputError("no vocabulary: give --vocab FILE or --classes 'cat;dog,puppy' (or export with one)")
        return self.vocabulary

    def text(self, vocabulary: Optional[Vocabulary] = None) -> TextClassifier:
        return self.text_cache.get(self.resolve_vocabulary(vocabulary))

    def segment(self, images: list[torch.Tensor], vocabulary: Optional[Vocabulary] = None,
                options: Optional[InferenceOptions] = None, sam_masks=None) -> PipelineResult:
        """``cmpf.pipeline.segment`` with these runners, the cached text classifiers and the defaults."""
        with torch.inference_mode():
            return segment(images, self.resolve_vocabulary(vocabulary), self.runners, self.cfg,
                           options or self.options, text_cache=self.text_cache, sam_masks=sam_masks,
                           device=self.device)

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()


def load_predictor(source: ModelSource, backend: Optional[str | Backend] = None,
                   device: str | torch.device = "cpu", *, seed: Optional[int] = None) -> Predictor:
    """The predictor of ``source`` on ``backend`` (default: onnxruntime for artifacts, else torch).

    Args:
        seed: seeds torch before building a random-weight eager model (identical on every rank).
    """
    backend = source.default_backend if backend is None else Backend.parse(backend)
    if source.artifacts:
        return _from_artifacts(source, backend, device)
    if backend is not Backend.TORCH:
        fmt = backend.format
        raise InputError(f"--model {source.model} runs the eager PyTorch model (--backend torch); for --backend "
                         f"{backend} export it first, `cmpf export --model {source.model} [--checkpoint CKPT] "
                         f"--out DIR --format {fmt}`, then pass --artifacts DIR")
    from cmpf.model import build_model
    from cmpf.runtime.torch_runner import torch_runners

    if seed is not None:
        torch.manual_seed(seed)
    model = build_model(source.model, source.checkpoint, source.clip_weights, source.sam_weights).to(device)
    return Predictor(torch_runners(model), model.cfg, backend, load_report=model.load_report, device=device)


def _from_artifacts(source: ModelSource, backend: Backend, device) -> Predictor:
    from cmpf.runtime import load_runners

    manifest = Manifest.read(Path(source.artifacts))
    if source.model and source.model != manifest.model.name:
        raise InputError(f"--model {source.model} asks for another model than {source.artifacts} holds "
                         f"({manifest.model.name}); drop --model or give the matching --artifacts DIR")
    runners = load_runners(manifest, backend, device, source.precision)
    return Predictor(runners, manifest.model, backend, options=manifest.inference,
                     vocabulary=manifest.vocabulary, device=device)


def options_with(options: InferenceOptions, **overrides) -> InferenceOptions:
    """``options`` with the overrides that are not None (CLI flags left unset keep the defaults)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(options, **given) if given else options
