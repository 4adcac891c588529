"""``cmpf parity``: a reference and candidates (any mix of eager model and artifacts), three levels, gates.

Sides: ``torch`` (the eager model: ``--model/--checkpoint``, else rebuilt from the first candidate's
artifacts), ``DIR:BACKEND`` or ``DIR`` (artifacts on their default backend). Every side goes through
``cmpf.predictor.load_predictor`` and runs the same pipeline on the same inputs:

1. tensor: the reference pipeline's captured graph inputs (first image) fed to both sides' runners;
2. image: both sides segment every image (the ``--image`` files, or the dataset's images);
3. dataset: ``cmpf.evaluation`` metrics of both sides on ``--dataset`` (or a generated synthetic set).

The rules (``--fail-on`` over the tolerance table's defaults) are checked per candidate; graphs
with a tensor-level breach get their inputs written under ``--out`` for ``polygraphy run
--load-inputs``. Every side must hold the reference's model (the manifests' configs are compared
before anything is loaded). Paths in the report are the ones the user gave (nothing machine-local:
a generated synthetic set lives in a temporary directory removed at the end).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from cmpf.backend import Backend
from cmpf.bench.agreement import ImageAgreement, image_agreement
from cmpf.bench.captured_inputs import write_polygraphy_inputs
from cmpf.bench.gates import check, parse_rules, resolve_rules
from cmpf.bench.parity import capture_graph_inputs, graph_parity
from cmpf.bench.parity_report import CandidateReport, DatasetLevel, ParityReport
from cmpf.config import ModelConfig, get_config
from cmpf.errors import InputError
from cmpf.evaluation.dataset_eval import evaluate_prepared
from cmpf.evaluation.prepare import prepare_dataset
from cmpf.manifest import PRECISIONS, Manifest
from cmpf.predictor import ModelSource, Predictor, load_predictor, options_with
from cmpf.vocabulary import Vocabulary

SYNTHETIC = "synthetic"
SYNTHETIC_VOCABULARY = "coco_panoptic_with_prompt_eng.txt"  # what prepare_dataset reads for COCO panoptic


@dataclass(frozen=True)
class ParityConfig:
    """What ``cmpf parity`` compares and how (see ``cmpf parity --help``)."""

    candidates: tuple[str, ...]
    reference: str = "torch"
    eager: Optional[ModelSource] = None  # the eager model of a ``torch`` side (default: from the artifacts)
    images: tuple[str, ...] = ()  # levels 1-2 (level 1 on the first)
    vocabulary: Optional[Vocabulary] = None  # levels 1-2 (default: the reference's, from its manifest)
    min_size: Optional[int] = None
    max_size: Optional[int] = None
    resize: Optional[bool] = None
    fail_on: Optional[str] = None
    dataset: Optional[str] = None  # a registry name, or "synthetic"
    data_root: Optional[str] = None
    vocab_dir: Optional[str] = None
    limit: Optional[int] = None
    synthetic_images: int = 4
    synthetic_size: int | tuple[int, int] = 64  # (H, W) or a square side
    synthetic_seed: int = 0  # the generator's seed (another seed than a model's training scenes: held out)
    out_dir: Optional[str] = None  # where failing graphs' inputs go
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.candidates:
            raise InputError("no candidate: give --candidate DIR:BACKEND (e.g. --candidate out/tiny:onnxruntime)")
        if not self.images:
            raise InputError("no image: give --image FILE")
        parse_rules(self.fail_on)  # a malformed rule fails before any model is loaded


@dataclass(frozen=True)
class Side:
    label: str
    source: ModelSource
    backend: Backend


def parse_side(text: str, eager: Optional[ModelSource], artifacts_fallback: Optional[str]) -> Side:
    """``torch`` | ``DIR[:BACKEND[:PRECISION]]`` → a side (a bad backend or a missing dir is an InputError).

    PRECISION is ``--precision``'s value (``int8``); GRAPH=P pairs separated by ``+``
    (``sam_image_encoder=int8+decoder=fp16``) since the side itself is a comma-free token.
    """
    if text == "torch":
        source = eager or (ModelSource(artifacts=artifacts_fallback) if artifacts_fallback else None)
        if source is None:
            raise InputError("--reference torch needs the eager model: give --model PRESET [--checkpoint CKPT] or a "
                             "candidate artifacts DIR to rebuild it from")
        return Side(text, source, Backend.TORCH)
    directory, backend, precision = _split_side(text)
    if not Path(directory).is_dir():
        raise InputError(f"{text}: {directory} is not a directory; give DIR:BACKEND with DIR written by `cmpf export`")
    return Side(text, ModelSource(artifacts=directory, precision=precision),
                Backend.parse(backend) if backend else Backend.ONNXRUNTIME)


def _split_side(text: str) -> tuple[str, str, Optional[str]]:
    parts = text.split(":")
    precision = None
    if len(parts) >= 3 and any(parts[-1].endswith(p) for p in PRECISIONS):
        precision = parts.pop().replace("+", ",")
    if len(parts) == 1:
        return parts[0], "", precision
    return ":".join(parts[:-1]), parts[-1], precision


def run_parity(cfg: ParityConfig) -> ParityReport:
    """Compare every candidate with the reference (nothing is written but failing graphs' inputs, under ``out_dir``)."""
    overrides = parse_rules(cfg.fail_on)
    first_dir = next((_split_side(s)[0] for s in cfg.candidates if s != "torch"), None)
    ref_side = parse_side(cfg.reference, cfg.eager, first_dir)
    sides = [parse_side(c, cfg.eager, first_dir) for c in cfg.candidates]
    for side in sides:  # before any model is loaded: another model's artifacts are refused in one line
        _check_same_model(ref_side, _declared_model(ref_side), side, _declared_model(side))
    with contextlib.ExitStack() as stack:
        data = _dataset(cfg, stack) if cfg.dataset else None  # checked before any model is loaded
        return _run(cfg, overrides, ref_side, sides, data)


def _run(cfg: ParityConfig, overrides, ref_side: Side, sides: list[Side], data) -> ParityReport:
    from cmpf.preprocess import load_image

    reference = load_predictor(ref_side.source, ref_side.backend, cfg.device)
    candidates = [load_predictor(s.source, s.backend, cfg.device) for s in sides]
    for side, pred in zip(sides, candidates):
        if set(pred.runners) != set(reference.runners):
            raise InputError(f"{side.label} has graphs {sorted(pred.runners)}, the reference {ref_side.label} "
                             f"{sorted(reference.runners)}; compare artifacts exported from the same model")
    vocabulary = cfg.vocabulary or reference.resolve_vocabulary(None)
    options = options_with(reference.options, min_size=cfg.min_size, max_size=cfg.max_size, resize=cfg.resize)
    names = [str(p) for p in cfg.images]
    images = [load_image(p) for p in names]
    inputs = capture_graph_inputs(reference.runners, images[:1], vocabulary, reference.cfg, options, cfg.device)
    ref_segs = reference.segment(images, vocabulary, options).segmentations
    dataset_segs = _dataset_levels(cfg, data, reference, candidates) if data is not None else None
    reports, failing = [], set()
    for i, (side, pred) in enumerate(zip(sides, candidates)):
        precision = _precision(side, pred)
        tensors = graph_parity(reference.runners, pred.runners, inputs, precision)
        segs = pred.segment(images, vocabulary, options).segmentations
        agree = [image_agreement(Path(n).name, r, c, vocabulary) for n, r, c in zip(names, ref_segs, segs)]
        level3 = None
        if dataset_segs is not None:
            level3, extra = dataset_segs[0][i], dataset_segs[1][i]
            agree += extra
        rules = resolve_rules(overrides, str(side.backend), precision)
        breaches = check(side.label, rules, _values(tensors, agree, level3))
        failing |= {b.where.split(".")[0] for b in breaches if b.level == "tensor"}
        reports.append(CandidateReport(side.label, str(side.backend), precision, tensors, agree, level3, rules,
                                       breaches))
    reproduce = _save_inputs(cfg, inputs, sorted(failing), [ref_side, *sides]) if failing and cfg.out_dir else {}
    return ParityReport(ref_side.label, reference.cfg.name, reports, [Path(n).name for n in names], reproduce,
                        sorted(failing), _settings(cfg))


def _settings(cfg: ParityConfig) -> dict:
    """What the run compared on, as the report records it (sizes, dataset, limit), for reruns."""
    synthetic = cfg.dataset == SYNTHETIC
    return {"min_size": cfg.min_size, "max_size": cfg.max_size, "resize": cfg.resize, "dataset": cfg.dataset,
            "limit": cfg.limit, "synthetic_images": cfg.synthetic_images if synthetic else None,
            "synthetic_size": cfg.synthetic_size if synthetic else None,
            "synthetic_seed": cfg.synthetic_seed if synthetic else None, "device": cfg.device}


def _values(tensors, images: list[ImageAgreement], dataset: Optional[DatasetLevel]) -> dict[str, dict]:
    """{metric: {where: value}} of every measured value the rules can gate."""
    values: dict[str, dict] = {"rel": {}, "abs": {}, "cos": {}, "iou": {}, "sem": {}, "pq": {}, "inst": {}}
    for r in tensors:
        where = f"{r.graph}.{r.output}"
        values["rel"][where], values["abs"][where], values["cos"][where] = r.rel_error, r.max_abs, r.cosine
        if r.mask_iou is not None:
            values["iou"][where] = r.mask_iou
    for a in images:
        values["sem"][a.image], values["pq"][a.image], values["inst"][a.image] = a.semantic, a.pq, a.instance_f1
    if dataset is not None:
        for metric, drop in dataset.drops.items():
            values[metric] = {dataset.dataset: drop}
    return values


def _precision(side: Side, predictor: Predictor) -> str:
    """The precision whose tolerance row judges the side: the lowest of its graphs' files."""
    if side.backend is Backend.TORCH:
        return "fp32"
    manifest = Manifest.read(Path(side.source.artifacts))
    from cmpf.runtime import RUNTIME_PRECISIONS

    found = set(manifest.runtime_plan(side.backend.format, side.source.precision,
                                      RUNTIME_PRECISIONS.get(side.backend, ())).values())
    return next((p for p in ("fp8", "int8", "bf16", "fp16") if p in found), "fp32")


def _declared_model(side: Side) -> ModelConfig:
    """The model config a side will load: its manifest's, or its preset's (nothing is built)."""
    if side.source.artifacts:
        return Manifest.read(Path(side.source.artifacts)).model
    return get_config(side.source.model)


def _check_same_model(ref_side: Side, reference: ModelConfig, side: Side, candidate: ModelConfig) -> None:
    if candidate != reference:
        fields = [f.name for f in dataclasses.fields(ModelConfig)
                  if getattr(candidate, f.name) != getattr(reference, f.name)]
        raise InputError(f"{side.label} holds another model ({candidate.name}) than the reference {ref_side.label} "
                         f"({reference.name}; they differ in {', '.join(fields[:4])}); compare artifacts exported "
                         f"from the same model, e.g. `cmpf export --model {reference.name} --out DIR`")


def _dataset(cfg: ParityConfig, stack: contextlib.ExitStack):
    if cfg.dataset != SYNTHETIC:
        return prepare_dataset(cfg.dataset, cfg.data_root, cfg.vocab_dir, None, cfg.limit)
    from cmpf.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_coco_panoptic
    from cmpf.io import write_text

    # generated input, not a result: removed when the run ends, and no path of it reaches the report
    root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cmpf-parity-synthetic-")))
    make_synthetic_coco_panoptic(root, cfg.synthetic_images, cfg.synthetic_size, seed=cfg.synthetic_seed,
                                 split="val2017", num_crowd_only=0)
    write_text(root / "vocab" / SYNTHETIC_VOCABULARY, "".join(f"{c.id}:{c.name}\n" for c in SYNTHETIC_CLASSES))
    return prepare_dataset("coco-panoptic-val", root, root / "vocab", None, cfg.limit)


def _dataset_levels(cfg: ParityConfig, data, reference: Predictor,
                    candidates: list[Predictor]) -> tuple[list[DatasetLevel], list[list[ImageAgreement]]]:
    """Level 3 per candidate, and level 2 on the dataset's images (segmented once per side)."""
    spec = data.spec

    def run(pred: Predictor):
        options = options_with(pred.options, resize=cfg.resize, min_size=cfg.min_size or spec.min_size_test,
                               max_size=cfg.max_size or spec.max_size_test,
                               object_mask_threshold=spec.object_mask_threshold)
        segs = []

        def predict(image: torch.Tensor, sample):
            seg = pred.segment([image], data.vocabulary, options).segmentations[0]
            segs.append((Path(sample.image_path).name, seg))
            return seg

        return _summary(evaluate_prepared(data, predict, progress=False)), segs

    ref_metrics, ref_segs = run(reference)
    levels, agreements = [], []
    for pred in candidates:
        cand_metrics, segs = run(pred)
        levels.append(DatasetLevel(cfg.dataset, len(data.samples), ref_metrics, cand_metrics))
        agreements.append([image_agreement(f"{cfg.dataset}/{n}", r, c, data.vocabulary)
                           for (n, r), (_, c) in zip(ref_segs, segs)])
    return levels, agreements


def _summary(results: Optional[dict]) -> dict[str, Optional[float]]:
    results = results or {}
    return {"pq": results.get("panoptic", {}).get("All", {}).get("pq"),
            "miou": results.get("semantic", {}).get("mIoU"),
            "ap": results.get("instance", {}).get("AP")}


def _save_inputs(cfg: ParityConfig, inputs, graphs: list[str], sides: list[Side]) -> dict[str, dict[str, str]]:
    """Each failing graph's captured inputs as ``<out>/inputs/<graph>.json`` (Polygraphy format; paths as
    ``--out`` and the sides were given)."""
    out = Path(cfg.out_dir)
    onnx_dirs = [Manifest.read(Path(s.source.artifacts)) for s in sides
                 if s.source.artifacts and s.backend is Backend.ONNXRUNTIME]
    reproduce = {}
    for graph in graphs:
        path = write_polygraphy_inputs(out / "inputs" / f"{graph}.json", [inputs[graph]])
        model = next((str(m.artifact(graph, "onnx").path) for m in onnx_dirs if "onnx" in m.graphs[graph].files),
                     f"{graph}.onnx")
        reproduce[graph] = {"inputs": str(path),
                            "command": f"polygraphy run {model} --onnxrt --load-inputs {path}"}
    return reproduce
