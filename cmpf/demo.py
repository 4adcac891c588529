"""``cmpf demo``: the whole toolchain on a model that segments something, in a few minutes, no downloads.

generated COCO-panoptic scenes (``cmpf.data.synthetic``: boxes and balls on sky / grass / wall) →
``cmpf train`` of the ``tiny`` preset on them (about two minutes on 2 cores; its frozen towers keep
their random weights, the decoder learns the scenes) → ``cmpf export`` (ONNX, optionally
AOTInductor) with the scenes' vocabulary and category ids → per-graph parity and latency of the
exported graphs against the eager model (rebuilt from the artifacts' weights) → ``cmpf run`` of the
exported pipeline on held-out scenes → exported vs eager per scene (pixel agreement, PQ, instance F1)
and the exported model against the scenes' ground truth (``cmpf metrics``: PQ, mIoU) → the files
and where they are. Nothing is downloaded; everything is written under ``DemoConfig.out_dir``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from cmpf.backend import Backend
from cmpf.bench.agreement import ImageAgreement, image_agreement
from cmpf.bench.parity import ParityRow, format_table, graph_parity, record_pipeline
from cmpf.bench.stages import time_graphs
from cmpf.data.synthetic import SYNTHETIC_CLASSES, SyntheticSet, make_synthetic_coco_panoptic
from cmpf.io import write_text
from cmpf.predictor import ModelSource, Predictor, load_predictor, options_with
from cmpf.preprocess import load_image
from cmpf.run import RunConfig, RunResult, run
from cmpf.vocabulary import Vocabulary

TRAIN_IMAGES, TRAIN_SIZE = 64, 128  # generated training scenes, and the square crop they are trained at
SCENE_SIZE = (128, 192)  # held-out scenes (H, W): short side as trained, segmented without resize


@dataclass(frozen=True)
class DemoConfig:
    out_dir: str = "demo_out"
    aoti: bool = False  # also compile AOTInductor packages (slower export)
    artifacts: Optional[str] = None  # reuse an export of the tiny preset: no training, no export
    train_iters: int = 200  # optimisation steps of 4 scenes: mIoU ~88 on held-out scenes (100 steps: ~69)
    scenes: int = 4  # held-out scenes segmented and scored
    iters: int = 5  # timed calls per graph and backend
    seed: int = 0


@dataclass(frozen=True)
class DemoResult:
    rows: list[ParityRow]
    table: str
    agreements: list[ImageAgreement]  # the exported pipeline against the eager model, per scene
    classes_found: list[int]  # distinct semantic labels the eager model gives each scene
    quality: dict[str, Optional[float]]  # the exported model against the scenes' ground truth (PQ, mIoU)
    run: RunResult
    files: dict[str, Path]

    @property
    def semantic_agreement(self) -> float:
        """The lowest fraction of pixels, over the scenes, where the exported semantic map equals eager."""
        return min(a.semantic for a in self.agreements)

    @property
    def output_varies(self) -> bool:
        """Whether the eager model gives every scene more than one class (else agreement is trivial)."""
        return min(self.classes_found) > 1

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Generate, train, export (unless ``cfg.artifacts``), compare, run, score; print each step."""
    # The tiny model's ops are too small to share between threads: one torch thread trains it ~10x
    # faster than two on a busy 2-core machine (measured: 0.57 vs 5.9 s a step of 4 scenes).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _demo(cfg)
    finally:
        torch.set_num_threads(threads)


def _demo(cfg: DemoConfig) -> DemoResult:
    start = time.perf_counter()
    out = Path(cfg.out_dir)
    scenes = make_synthetic_coco_panoptic(out / "data", cfg.scenes, SCENE_SIZE, seed=cfg.seed + 1, split="val2017",
                                          image_format="png", num_crowd_only=0)
    vocab_file = write_text(out / "data" / "vocabulary.txt",
                            "".join(f"{c.id}:{c.name}\n" for c in SYNTHETIC_CLASSES))
    artifacts = Path(cfg.artifacts) if cfg.artifacts else _train_and_export(cfg, out, vocab_file)
    source = ModelSource(artifacts=str(artifacts))
    backends = [Backend.ONNXRUNTIME] + ([Backend.AOTI] if cfg.aoti else [])
    reference = load_predictor(source, Backend.TORCH)
    candidates = {str(b): load_predictor(source, b) for b in backends}
    vocab = _vocabulary()
    options = options_with(reference.options, resize=False)
    images = [load_image(scenes.image_dir / f"{i + 1:012d}.png") for i in range(cfg.scenes)]
    rows, table = _graph_table(reference, candidates, images[0], vocab, options, cfg.iters)
    print(table)
    ours = candidates["onnxruntime"]
    agreements, found = [], []
    for i, image in enumerate(images):
        eager = reference.segment([image], vocab, options).segmentations[0]
        exported = ours.segment([image], vocab, options).segmentations[0]
        agreements.append(image_agreement(f"scene {i + 1}", eager, exported, vocab))
        found.append(int(eager.semantic_labels.unique().numel()))
    print(_agreement_table(agreements, found))
    results = out / "results"
    print(f"cmpf run {scenes.image_dir} --artifacts {artifacts} --coco-json {scenes.json_path} --no-resize "
          f"--out {results}")
    result = run(RunConfig(inputs=(str(scenes.image_dir),), out_dir=str(results), source=source,
                           backend=Backend.ONNXRUNTIME, coco_json=str(scenes.json_path), resize=False))
    print(result.summary())
    quality = _score(scenes, results)
    print(f"the exported model on {cfg.scenes} held-out scenes, against their ground truth: "
          f"PQ {_pct(quality['PQ'])}, mIoU {_pct(quality['mIoU'])} (cmpf metrics panoptic --gt-json "
          f"{scenes.json_path} --gt-dir {scenes.panoptic_dir} --pred-json {results / 'panoptic.json'} --pred-dir "
          f"{results / 'panoptic'})")
    files = _files(out, artifacts, results, scenes)
    print("files:\n" + "\n".join(f"  {path}  {what}" for what, path in files.items()))
    print(f"demo done in {time.perf_counter() - start:.0f} s; look at {results / 'overlay'}/")
    return DemoResult(rows, table, agreements, found, quality, result, files)


def _vocabulary() -> Vocabulary:
    return Vocabulary(tuple((c.name,) for c in SYNTHETIC_CLASSES), tuple(c.isthing for c in SYNTHETIC_CLASSES))


def _train_and_export(cfg: DemoConfig, out: Path, vocab_file: Path) -> Path:
    from cmpf.export.api import ExportConfig, export_model
    from cmpf.train.loop import TrainConfig, train

    make_synthetic_coco_panoptic(out / "data", TRAIN_IMAGES, TRAIN_SIZE, seed=cfg.seed)
    print(f"training the tiny preset on {TRAIN_IMAGES} generated scenes ({cfg.train_iters} steps of 4; its frozen "
          f"CLIP and SAM towers keep their random weights, the decoder learns) ...")
    trained = train(TrainConfig(preset="tiny", data_root=str(out / "data"), out_dir=str(out / "train"),
                                max_iter=cfg.train_iters, batch_size=4, lr=1e-3, lr_steps=(0.85,),
                                image_size=TRAIN_SIZE, num_points=1024, num_workers=0, seed=cfg.seed,
                                checkpoint_period=cfg.train_iters, log_period=10, device="cpu"))
    print(f"trained: loss {trained.metrics.get('loss', float('nan')):.1f} at step {trained.iteration}; "
          f"wrote {trained.final_weights}")
    directory = out / "artifacts"
    formats = ("onnx", "aoti") if cfg.aoti else ("onnx",)
    things = ";".join(c.name for c in SYNTHETIC_CLASSES if c.isthing)
    print(f"exporting it ({', '.join(formats)}) to {directory} ...")
    torch.manual_seed(cfg.seed)
    export_model(ExportConfig("tiny", str(directory), checkpoint=str(trained.final_weights), formats=formats,
                              vocab=str(vocab_file), things=things, train_vocab=str(vocab_file)))
    return directory


def _graph_table(reference: Predictor, candidates: dict[str, Predictor], image: torch.Tensor, vocab: Vocabulary,
                 options, iters: int) -> tuple[list[ParityRow], str]:
    """Per graph and backend: the largest relative error against eager and the median latency."""
    eager = reference.runners
    _, inputs = record_pipeline(eager, [image], vocab, reference.cfg, options)
    timings = {"torch": {t.stage: t.timing for t in time_graphs(eager, inputs, warmup=1, iters=iters)}}
    rows: list[ParityRow] = []
    for name, predictor in candidates.items():
        timings[name] = {t.stage: t.timing for t in time_graphs(predictor.runners, inputs, warmup=1, iters=iters)}
        rows += graph_parity(eager, predictor.runners, inputs)
    table_rows = []
    for graph in inputs:
        table_rows.append([graph, "torch", "-", f"{timings['torch'][graph].median_ms:.1f}"])
        for name in candidates:
            errors = [r.rel_error for r in rows if r.graph == graph and r.backend == name]
            table_rows.append([graph, name, max(errors), f"{timings[name][graph].median_ms:.1f}"])
    return rows, format_table(["graph", "backend", "max rel. error", "ms / call"], table_rows)


def _agreement_table(agreements: list[ImageAgreement], found: list[int]) -> str:
    rows = [[a.image, str(n), f"{a.semantic:.2%}", _pct(a.pq), f"{a.instance_f1:.2f}", f"{a.segments[0]}"]
            for a, n in zip(agreements, found)]
    return format_table(["onnxruntime vs torch", "classes found", "pixels agree", "PQ", "instance F1", "segments"],
                        rows)


def _score(scenes: SyntheticSet, results: Path) -> dict[str, Optional[float]]:
    from cmpf.evaluation.panoptic import panoptic_accumulator_from_files
    from cmpf.evaluation.semantic import semantic_accumulator_from_files

    panoptic = panoptic_accumulator_from_files(scenes.json_path, scenes.panoptic_dir, results / "panoptic.json",
                                               results / "panoptic").result()
    semantic = semantic_accumulator_from_files(scenes.semantic_dir, results / "semantic",
                                               len(SYNTHETIC_CLASSES)).result()
    return {"PQ": panoptic["All"]["pq"], "mIoU": semantic["mIoU"]}


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def _files(out: Path, artifacts: Path, results: Path, scenes: SyntheticSet) -> dict[str, Path]:
    files = {"the held-out scenes (COCO panoptic layout, ground truth beside them)": scenes.image_dir,
             "the vocabulary (id:name, the category ids of every result file)": out / "data" / "vocabulary.txt"}
    if (out / "train" / "model_final.pth").is_file():
        files["the trained tiny model (and metrics.jsonl of the training)"] = out / "train" / "model_final.pth"
    files |= {"the export: one ONNX file per graph + manifest.json": artifacts,
              "labelled overlays: each segment in its colour, named, with a legend": results / "overlay",
              "semantic maps: palette PNGs of class indices (what cmpf metrics semantic reads)": results / "semantic",
              "colour semantic maps": results / "color",
              "COCO panoptic PNGs + panoptic.json (dataset category ids, bbox, area)": results / "panoptic",
              "COCO instance results (RLE, bbox, area, score)": results / "instances.json"}
    return files
