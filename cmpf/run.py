"""``cmpf run``: images + vocabulary + (checkpoint | exported artifacts) → result files.

Everything is validated before any output is written (images readable, vocabulary valid, weights
loadable), so a bad input never leaves half the results on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from cmpf.outputs import dump_tensors, write_segmentation
from cmpf.pipeline import PipelineOptions, TextCache, segment
from cmpf.preprocess import load_image
from cmpf.vocabulary import Vocabulary, VocabularyError, load_vocabulary_file, parse_class_list


@dataclass(frozen=True)
class RunConfig:
    images: tuple[str, ...]
    out_dir: str
    model: Optional[str] = None
    checkpoint: Optional[str] = None
    clip_weights: Optional[str] = None
    sam_weights: Optional[str] = None
    artifacts: Optional[str] = None
    backend: str = "onnxruntime"
    vocab: Optional[str] = None
    classes: Optional[str] = None
    things: Optional[str] = None
    train_vocab: Optional[str] = None
    resize: bool = True
    dump_tensors: Optional[str] = None
    device: str = "cpu"


def load_vocabularies(cfg: RunConfig) -> tuple[Vocabulary, list[bool]]:
    things = [t.strip() for t in cfg.things.split(";") if t.strip()] if cfg.things else None
    if (cfg.vocab is None) == (cfg.classes is None):
        raise VocabularyError("give exactly one of --vocab FILE or --classes 'cat;dog,puppy;sky'")
    vocab = load_vocabulary_file(cfg.vocab, things) if cfg.vocab else parse_class_list(cfg.classes, things)
    if cfg.train_vocab:
        seen = vocab.seen_mask(load_vocabulary_file(cfg.train_vocab))
    else:
        seen = [False] * len(vocab)  # no training vocabulary: every class is ensembled as unseen
    return vocab, seen


def build_runners(cfg: RunConfig):
    """The graph runners and the model config, from a checkpoint (eager) or exported artifacts."""
    if cfg.artifacts:
        from cmpf.runtime import load_artifacts  # noqa: PLC0415 (issue 3 runtime)

        return load_artifacts(cfg.artifacts, cfg.backend, cfg.device)
    if cfg.model is None:
        raise ValueError("give --model PRESET (with --checkpoint) or --artifacts DIR")
    from cmpf.model import build_model
    from cmpf.runtime.torch_runner import torch_runners

    model = build_model(cfg.model, cfg.checkpoint, cfg.clip_weights, cfg.sam_weights).to(cfg.device)
    if model.load_report is not None:
        print("weights:\n" + model.load_report.summary())
    else:
        print(f"warning: no --checkpoint: {cfg.model} runs with random weights")
    return torch_runners(model), model.cfg


def run(cfg: RunConfig) -> list[Path]:
    """Segment every image and write the result files; returns the paths written."""
    images = [load_image(p) for p in cfg.images]  # fail early on any bad image
    vocab, seen = load_vocabularies(cfg)
    runners, model_cfg = build_runners(cfg)
    options = PipelineOptions(resize=cfg.resize)
    text = TextCache().get(vocab, runners["text_encoder"])
    written: list[Path] = []
    for i, (path, image) in enumerate(tqdm(list(zip(cfg.images, images)), desc="segment", unit="img")):
        result = segment([image], vocab, runners, model_cfg, seen, options, text=text, device=cfg.device)
        seg = result.segmentations[0]
        written += write_segmentation(seg, image, cfg.out_dir, Path(path).stem, image_id=Path(path).stem).values()
        if cfg.dump_tensors and i == 0:
            written.append(dump_tensors(cfg.dump_tensors, result.tensors, seg))
    return written
