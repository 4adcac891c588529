"""``cmpf demo``: the whole toolchain on the ``tiny`` preset in a few minutes, no downloads.

random-weight ``tiny`` model → ``cmpf export`` (ONNX, optionally AOTInductor) → the pipeline on the
bundled ``assets/sample.png`` with ONNX Runtime → per-graph parity and latency against the eager
model (rebuilt from the artifacts' manifest and weights) → a table and the segmentation files.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Optional

import torch

from cmpf.bench.parity import ParityRow, format_table, graph_parity, record_pipeline
from cmpf.bench.stages import time_graphs
from cmpf.backend import Backend
from cmpf.outputs import write_segmentation
from cmpf.predictor import ModelSource, load_predictor
from cmpf.preprocess import load_image
from cmpf.vocabulary import parse_class_list

SAMPLE_IMAGE = files("cmpf") / "assets" / "sample.png"  # 240×320 synthetic scene (sky, grass, sun, house, pond)
DEMO_CLASSES = "sky;grass;sun;house,building;roof;pond,water"
DEMO_THINGS = ("sun", "house")


@dataclass(frozen=True)
class DemoConfig:
    out_dir: str = "demo_out"
    aoti: bool = False  # also compile AOTInductor packages (slower export)
    artifacts: Optional[str] = None  # reuse an existing `cmpf export` directory of the tiny preset
    iters: int = 5


@dataclass(frozen=True)
class DemoResult:
    rows: list[ParityRow]
    table: str
    semantic_agreement: float  # fraction of pixels where the backend's semantic map equals eager
    files: list[Path]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Export (unless ``cfg.artifacts``), run, compare, and print the table."""
    out = Path(cfg.out_dir)
    artifacts = Path(cfg.artifacts) if cfg.artifacts else _export(cfg, out / "artifacts")
    source = ModelSource(artifacts=str(artifacts))
    predictors = {b: load_predictor(source, b) for b in (Backend.TORCH, Backend.ONNXRUNTIME)}
    if cfg.aoti:
        predictors[Backend.AOTI] = load_predictor(source, Backend.AOTI)
    reference = predictors.pop(Backend.TORCH)
    eager = reference.runners
    backends = {str(b): p.runners for b, p in predictors.items()}
    image = load_image(SAMPLE_IMAGE)
    vocab = parse_class_list(DEMO_CLASSES, things=DEMO_THINGS)
    # the eager segmentation and the inputs every graph received
    ref, inputs = record_pipeline(eager, [image], vocab, reference.cfg, reference.options)
    rows, table_rows = [], []
    timings = {"torch": {t.stage: t.timing for t in time_graphs(eager, inputs, warmup=1, iters=cfg.iters)}}
    for name, runners in backends.items():
        timings[name] = {t.stage: t.timing for t in time_graphs(runners, inputs, warmup=1, iters=cfg.iters)}
        rows += graph_parity(eager, runners, inputs)
    for graph in inputs:
        table_rows.append([graph, "torch", "-", f"{timings['torch'][graph].median_ms:.1f}"])
        for name in backends:
            errors = [r.rel_error for r in rows if r.graph == graph and r.backend == name]
            table_rows.append([graph, name, max(errors), f"{timings[name][graph].median_ms:.1f}"])
    ours = predictors[Backend.ONNXRUNTIME].segment([image], vocab).segmentations[0]
    agreement = float((ours.semantic_labels == ref.segmentations[0].semantic_labels).float().mean())
    written = list(write_segmentation(ours, image, out / "segmentation", "sample").values())
    table = format_table(["graph", "backend", "max rel. error", "ms / call"], table_rows)
    print(table)
    print(f"semantic map, onnxruntime vs torch: {agreement:.2%} of pixels agree; files in {out / 'segmentation'}")
    return DemoResult(rows, table, agreement, written)


def _export(cfg: DemoConfig, directory: Path) -> Path:
    from cmpf.export.api import ExportConfig, export_model
    from cmpf.model import build_model

    torch.manual_seed(0)  # the demo's random weights are the same on every machine
    formats = ("onnx", "aoti") if cfg.aoti else ("onnx",)
    print(f"exporting the tiny preset ({', '.join(formats)}) to {directory} ...")
    export_model(ExportConfig("tiny", str(directory), formats=formats, classes=DEMO_CLASSES), model=build_model("tiny"))
    return directory
