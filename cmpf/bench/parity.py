"""Parity of a backend with the eager model, graph by graph, on the inputs a real image produces.

``capture_graph_inputs`` runs ``cmpf.pipeline.segment`` once with the reference runners and keeps
the inputs each graph received; ``graph_parity`` feeds the same inputs to both sides and reports
the L2-relative error, max abs error and cosine similarity of every output, with the bound of
``cmpf.tolerances`` for the candidate's backend and precision (the table the tests use). Masks are
also compared by IoU of their binarised logits. This is level 1 (tensor) of ``cmpf parity``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import torch

from cmpf.config import InferenceOptions, ModelConfig
from cmpf.pipeline import PipelineResult, segment
from cmpf.runtime.base import Runner
from cmpf.runtime.recording import RecordingRunner
from cmpf.tolerances import cosine_similarity, mask_iou, max_abs_error, rel_error, rel_tolerance
from cmpf.vocabulary import Vocabulary

MASK_OUTPUTS = ("pred_masks",)


def record_pipeline(runners: Mapping[str, Runner], images: list[torch.Tensor], vocabulary: Vocabulary,
                    cfg: ModelConfig, options: InferenceOptions = InferenceOptions(),
                    device: str | torch.device = "cpu",
                    text_cache=None) -> tuple[PipelineResult, dict[str, dict[str, torch.Tensor]]]:
    """Segment ``images`` and keep the inputs each graph received (the text encoder's first call:
    the first ``options.text_batch`` prompts; none when ``text_cache`` already holds the vocabulary)."""
    recorders = {g: RecordingRunner(r) for g, r in runners.items()}
    result = segment(images, vocabulary, recorders, cfg, options, device=device, text_cache=text_cache)
    return result, {g: r.inputs for g, r in recorders.items() if r.inputs is not None}


def capture_graph_inputs(runners: Mapping[str, Runner], images: list[torch.Tensor], vocabulary: Vocabulary,
                         cfg: ModelConfig, options: InferenceOptions = InferenceOptions(),
                         device: str | torch.device = "cpu", text_cache=None) -> dict[str, dict[str, torch.Tensor]]:
    """The inputs of every graph when the pipeline segments ``images`` (see ``record_pipeline``)."""
    return record_pipeline(runners, images, vocabulary, cfg, options, device, text_cache)[1]


@dataclass(frozen=True)
class ParityRow:
    graph: str
    backend: str
    output: str
    rel_error: float  # ||a - b||₂ / ||b||₂ against the reference
    max_abs: float
    tolerance: float
    mask_iou: float | None = None  # binarised (logit > 0) masks
    cosine: float | None = None  # cosine similarity of the flattened tensors

    @property
    def ok(self) -> bool:
        return self.rel_error <= self.tolerance  # False for NaN

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def graph_parity(reference: Mapping[str, Runner], candidate: Mapping[str, Runner],
                 inputs: Mapping[str, Mapping[str, torch.Tensor]], precision: str = "fp32") -> list[ParityRow]:
    """One row per graph output: ``candidate[g](inputs[g])`` against ``reference[g](inputs[g])``."""
    rows = []
    for graph, feed in inputs.items():
        expected, actual = reference[graph](feed), candidate[graph](feed)
        backend = candidate[graph].backend
        for name, ref in expected.items():
            got = actual[name]
            if got.shape != ref.shape:
                raise ValueError(f"{graph}.{name}: {backend} shape {tuple(got.shape)}, eager {tuple(ref.shape)}")
            iou = mask_iou(got.cpu() > 0, ref.cpu() > 0) if name in MASK_OUTPUTS else None
            rows.append(ParityRow(graph, backend, name, rel_error(got, ref), max_abs_error(got, ref),
                                  rel_tolerance(backend, precision), iou, cosine_similarity(got, ref)))
    return rows


def format_table(header: list[str], rows: list[list]) -> str:
    """A plain fixed-width table (also valid Markdown)."""
    cells = [header] + [[f"{c:.2e}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])
