"""The ``cmpf parity`` report: one versioned JSON shape (``read`` / ``to_json``) and its Markdown.

A report holds, per candidate, the three levels (tensor rows, per-image agreement, dataset
metrics of both sides and their drops), the rules it was gated on and the breaches, each naming the
rule and its margin, plus the Polygraphy input files written for failing graphs (under ``--out``;
without it the failing graphs are named and the report says how to save their inputs), and the
settings the run compared on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from cmpf.bench.agreement import ImageAgreement
from cmpf.bench.gates import Breach, Rule
from cmpf.bench.parity import ParityRow, format_table
from cmpf.errors import InputError

SCHEMA = "cmpf.parity/1"


@dataclass(frozen=True)
class DatasetLevel:
    """Task metrics (percent) of both sides on one dataset, and reference minus candidate."""

    dataset: str
    num_images: int
    reference: dict[str, Optional[float]]  # {"pq", "miou", "ap"}
    candidate: dict[str, Optional[float]]

    @property
    def drops(self) -> dict[str, Optional[float]]:
        return {f"{k}_drop": (None if v is None or self.candidate.get(k) is None else v - self.candidate[k])
                for k, v in self.reference.items()}

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "num_images": self.num_images, "reference": self.reference,
                "candidate": self.candidate, "drops": self.drops}


@dataclass(frozen=True)
class CandidateReport:
    label: str  # as given: "DIR:onnxruntime"
    backend: str
    precision: str
    tensors: list[ParityRow]
    images: list[ImageAgreement]
    dataset: Optional[DatasetLevel]
    rules: list[Rule]
    breaches: list[Breach]

    @property
    def ok(self) -> bool:
        return not self.breaches

    def to_json(self) -> dict:
        return {"label": self.label, "backend": self.backend, "precision": self.precision, "ok": self.ok,
                "rules": [str(r) for r in self.rules],
                "breaches": [{**asdict(b), "message": str(b)} for b in self.breaches],
                "tensor": [r.to_json() for r in self.tensors], "image": [a.to_json() for a in self.images],
                "dataset": None if self.dataset is None else self.dataset.to_json()}


@dataclass(frozen=True)
class ParityReport:
    reference: str
    model: str
    candidates: list[CandidateReport]
    images: list[str]
    reproduce: dict[str, dict[str, str]] = field(default_factory=dict)  # graph -> {"inputs", "command"}
    failing_graphs: list[str] = field(default_factory=list)  # graphs with a tensor-level breach
    settings: dict = field(default_factory=dict)  # sizes, dataset, limit, device of the run

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.candidates)

    @property
    def breaches(self) -> list[Breach]:
        return [b for c in self.candidates for b in c.breaches]

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "ok": self.ok, "reference": self.reference, "model": self.model,
                "images": self.images, "settings": self.settings,
                "candidates": [c.to_json() for c in self.candidates], "reproduce": self.reproduce,
                "failing_graphs": self.failing_graphs}

    def to_markdown(self) -> str:
        given = ", ".join(f"{k} {v}" for k, v in self.settings.items() if v is not None)
        lines = [f"# cmpf parity: {'PASS' if self.ok else 'FAIL'}", "",
                 f"model `{self.model}`, reference `{self.reference}`, images: {', '.join(self.images)}"
                 + (f"; {given}" if given else ""), ""]
        for c in self.candidates:
            lines += [f"## {c.label} ({c.backend}, {c.precision}): {'pass' if c.ok else 'FAIL'}", "",
                      "rules: " + ", ".join(f"`{r}`" for r in c.rules), ""]
            lines += [f"- **breach**: {b}" for b in c.breaches] + ([""] if c.breaches else [])
            lines += ["### Tensors (level 1)", "", tensor_table(c.tensors), ""]
            if c.images:
                lines += ["### Images (level 2)", "", image_table(c.images), ""]
            if c.dataset is not None:
                lines += [f"### Dataset `{c.dataset.dataset}`, {c.dataset.num_images} images (level 3)", "",
                          dataset_table(c.dataset), ""]
        if self.reproduce:
            lines += ["## Reproduce without cmpf", ""]
            lines += [f"- `{g}`: `{r['command']}`" for g, r in self.reproduce.items()] + [""]
        elif self.failing_graphs:
            lines += ["## Reproduce without cmpf", "",
                      f"rerun with `--out DIR` to save the inputs of {', '.join(self.failing_graphs)} for "
                      f"`polygraphy run <graph>.onnx --onnxrt --load-inputs DIR/inputs/<graph>.json`", ""]
        return "\n".join(lines)


def tensor_table(rows: list[ParityRow]) -> str:
    return format_table(["graph", "output", "rel. error", "max abs", "cosine", "mask IoU", "rel. bound"],
                        [[r.graph, r.output, r.rel_error, r.max_abs, _f(r.cosine, 8), _f(r.mask_iou, 4),
                          r.tolerance] for r in rows])


def image_table(images: list[ImageAgreement]) -> str:
    return format_table(["image", "semantic agreement", "PQ vs reference", "instance F1", "segments ref/cand",
                         "instances ref/cand"],
                        [[a.image, _f(a.semantic, 4), _f(a.pq, 2), _f(a.instance_f1, 4),
                          "%d/%d" % a.segments, "%d/%d" % a.instances] for a in images])


def dataset_table(d: DatasetLevel) -> str:
    drops = d.drops
    return format_table(["metric", "reference", "candidate", "drop"],
                        [[k, _f(v, 2), _f(d.candidate.get(k), 2), _f(drops[f"{k}_drop"], 3)]
                         for k, v in d.reference.items()])


def _f(v: Optional[float], digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def read_report(path: str | Path) -> dict[str, Any]:
    """A parity report's JSON, after checking its schema."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InputError(f"{path}: not a cmpf parity report ({SCHEMA}); write one with `cmpf parity --out DIR`")
    return data
