"""``cmpf eval``: run the pipeline over a benchmark dataset and compute the paper's metrics.

Consumes a :class:`~cmpf.data.registry.DatasetSpec` (files checked with ``check_dataset``), the
dataset's vocabulary and a way to segment one image (the pipeline with runners, or any
``predict(image, sample) -> Segmentation``); produces ``{"panoptic"|"semantic"|"instance": result}``
in the formats of ``cmpf metrics`` (percent, ``None`` where undefined).

The stages, one module each: :mod:`~cmpf.evaluation.prepare` checks the dataset and lists its
samples (class ids: :mod:`~cmpf.evaluation.id_mapping`) before any model is loaded;
:mod:`~cmpf.evaluation.records` scores each image of this rank's shard;
:mod:`~cmpf.evaluation.gather` gathers the shards to rank 0 (``torchrun``) and merges them in image
order, so any number of ranks gives bit-identical metrics.
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from tqdm import tqdm

from cmpf.data.registry import DatasetSpec, Task
from cmpf.evaluation.gather import dist_info, gather_to_main, raise_if_any_failed, reduce_payloads, shard
from cmpf.evaluation.prepare import PreparedDataset, Sample, prepare_dataset
from cmpf.evaluation.records import ShardState
from cmpf.evaluation.report import MetricsInputError, format_instance, format_panoptic, format_semantic
from cmpf.postprocess import Segmentation
from cmpf.predictor import ModelSource
from cmpf.vocabulary import load_vocabulary_file

TRAIN_VOCABULARY = "coco_panoptic_with_prompt_eng.txt"  # the official models are trained on COCO panoptic

PredictFn = Callable[[torch.Tensor, Sample], Segmentation]

_EXPECTED = (MetricsInputError, FileNotFoundError, ValueError)


@dataclass(frozen=True)
class EvalConfig:
    """``cmpf eval`` options (see ``cmpf eval --help``)."""

    dataset: Union[str, DatasetSpec]
    source: Optional[ModelSource] = None  # None only with an explicit ``predict``
    backend: Optional[str] = None  # default: onnxruntime for artifacts, torch for a preset
    data_root: Optional[str] = None
    vocab_dir: Optional[str] = None
    train_vocab: Optional[str] = None
    tasks: Optional[tuple[Task, ...]] = None
    limit: Optional[int] = None
    min_size: Optional[int] = None  # override the dataset's test resolution
    max_size: Optional[int] = None
    resize: Optional[bool] = None  # None: the model's default (the official resize)
    device: str = "cpu"
    progress: bool = True
    seed: int = 0  # random-weight presets are built identically on every rank


@dataclass
class EvalReport:
    """Rank 0's outcome: the JSON-ready results and the printed tables."""

    results: dict[str, Any]
    table: str


def evaluate(cfg: EvalConfig, predict: Optional[PredictFn] = None) -> Optional[EvalReport]:
    """Evaluate a model (or ``predict``) on a dataset, across the current process group if any.

    Everything about the dataset is checked before the model is built.

    Returns:
        On rank 0, ``{"panoptic"|"semantic"|"instance": result, "meta": {...}}`` with its tables;
        None on the other ranks.
    """
    data = prepare_dataset(cfg.dataset, cfg.data_root, cfg.vocab_dir, cfg.tasks, cfg.limit)
    rank, world = dist_info()
    seen_from = training_vocabulary(cfg.train_vocab, cfg.vocab_dir) if predict is None else None
    backend, num_seen = None, None
    if predict is None:
        predict, backend, num_seen = pipeline_predictor(cfg, data, cfg.device, quiet=rank != 0)
    results = evaluate_prepared(data, predict, progress=cfg.progress)
    if results is None:
        return None
    results["meta"] = {
        "dataset": data.spec.name,
        "official_name": data.spec.official_name,
        "tasks": list(data.tasks),
        "num_images": len(data.samples),
        "model": cfg.source.model if cfg.source else None,
        "checkpoint": cfg.source.checkpoint if cfg.source else None,
        "artifacts": cfg.source.artifacts if cfg.source else None,
        "backend": backend,
        "min_size_test": cfg.min_size or data.spec.min_size_test,
        "max_size_test": cfg.max_size or data.spec.max_size_test,
        "resize": cfg.resize is not False,
        "object_mask_threshold": data.spec.object_mask_threshold,
        "train_vocab": seen_from,
        "num_seen_classes": num_seen,
        "world_size": world,
    }
    notes = _metric_notes(data)
    if notes:
        results["meta"]["notes"] = notes
    table = format_results(results, category_names(data))
    return EvalReport(results, "\n".join([table, *(f"note: {n}" for n in notes)]))


def evaluate_prepared(
    data: PreparedDataset, predict: PredictFn, progress: bool = True, load_image: Optional[Callable] = None
) -> Optional[dict[str, Any]]:
    """Segment this rank's shard, gather to rank 0 and reduce.

    Args:
        data: from :func:`~cmpf.evaluation.prepare.prepare_dataset`.
        predict: ``(uint8 (3, H, W) image, sample) -> Segmentation`` at the image's size.
        progress: tqdm bar on rank 0.
        load_image: image reader (default :func:`cmpf.preprocess.load_image`).
    Returns:
        ``{"panoptic"|"semantic"|"instance": result}`` on rank 0, None on the other ranks.
    """
    if load_image is None:
        from cmpf.preprocess import load_image
    rank, world = dist_info()
    state = ShardState(data)
    mine = [data.samples[i] for i in shard(len(data.samples), rank, world)]
    error = None
    try:
        for sample in tqdm(mine, desc=f"eval {data.spec.name}", unit="img", disable=not progress or rank != 0,
                           file=sys.stderr):
            state.add(sample, predict(load_image(sample.image_path), sample))
    except Exception as e:
        if world == 1:
            raise
        error = (isinstance(e, _EXPECTED), f"{type(e).__name__}: " * (not isinstance(e, _EXPECTED)) + str(e))
    if world > 1:
        raise_if_any_failed(error)
    payloads = gather_to_main(state.payload())
    if rank != 0:
        return None
    return reduce_payloads(data, payloads)


def training_vocabulary(train_vocab: Optional[str], vocab_dir: Optional[str]) -> Optional[str]:
    """The training vocabulary whose synonyms are the seen classes (ensemble α vs β).

    ``train_vocab`` if given, else ``<vocab_dir>/coco_panoptic_with_prompt_eng.txt`` if present (the
    official models' training set), else None (every class counts as unseen).
    """
    if train_vocab is None and vocab_dir is not None and (Path(vocab_dir) / TRAIN_VOCABULARY).is_file():
        return str(Path(vocab_dir) / TRAIN_VOCABULARY)
    return train_vocab


def pipeline_predictor(cfg: EvalConfig, data: PreparedDataset, device: str,
                       quiet: bool = False) -> tuple[PredictFn, str, int]:
    """Load the predictor (checkpoint or artifacts); returns the per-image pipeline call, its backend and
    the number of seen classes (from ``--train-vocab``, ``--vocab-dir`` or the artifacts' manifest)."""
    from cmpf.predictor import load_predictor, options_with

    if cfg.source is None:
        raise ValueError("EvalConfig.source is needed unless a predict function is given")
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        predictor = load_predictor(cfg.source, cfg.backend, device, seed=cfg.seed)
    spec = data.spec
    options = options_with(predictor.options, resize=cfg.resize, min_size=cfg.min_size or spec.min_size_test,
                           max_size=cfg.max_size or spec.max_size_test,
                           object_mask_threshold=spec.object_mask_threshold)
    train = training_vocabulary(cfg.train_vocab, cfg.vocab_dir)
    if train is not None:
        options = options.with_seen(load_vocabulary_file(train).classes)
    vocabulary = data.vocabulary

    def predict(image: torch.Tensor, sample: Sample) -> Segmentation:
        return predictor.segment([image], vocabulary, options).segmentations[0]

    return predict, str(predictor.backend), sum(options.seen_mask(vocabulary.classes))


def _metric_notes(data: PreparedDataset) -> list[str]:
    notes = []
    if "instance" in data.tasks and data.spec.name == "lvis":
        notes.append("instance AP is pycocotools COCO AP on the LVIS annotation, not the LVIS API's federated AP")
    if "instance" in data.tasks and data.instance_gt is None:
        notes.append("instance AP is COCO AP on instances derived from the panoptic annotation, "
                     "not the cityscapesscripts instance evaluation")
    return notes


def format_results(results: Mapping[str, Any], data_names: Optional[Mapping[str, Mapping[int, str]]] = None) -> str:
    """The ``cmpf metrics`` tables of each task present in ``results``."""
    names = data_names or {}
    parts = []
    if "panoptic" in results:
        parts.append(format_panoptic(results["panoptic"], names.get("panoptic")))
    if "semantic" in results:
        parts.append(format_semantic(results["semantic"]))
    if "instance" in results:
        parts.append(format_instance(results["instance"], names.get("instance")))
    return "\n\n".join(parts)


def category_names(data: PreparedDataset) -> dict[str, dict[int, str]]:
    """Category id → name per task, for the tables."""
    return {
        "panoptic": {int(c["id"]): str(c.get("name", "")) for c in data.panoptic_categories},
        "instance": {int(c["id"]): str(c.get("name", "")) for c in data.instance_categories},
    }
