"""``cmpf bench --backend A,B --precision P,Q``: one bench per backend × precision, one report comparing them.

Model source + combinations + image + vocabulary + ``BenchConfig`` → a ``cmpf.bench-matrix/1`` dict:
every combination that ran as a full ``cmpf.bench/1`` report, every one that could not (backend not
installed, no file of that precision, the eager model at int8) as a one-line reason, and the p50
ratios of every (stage, batch, shape) to the first combination that ran. Its Markdown and CSV are
written from that dict alone, like a single report's.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import io
from dataclasses import dataclass
from typing import Optional

import torch

from cmpf.backend import Backend
from cmpf.bench.bench_report import environment_lines, shape_text
from cmpf.bench.bench_run import MATRIX_SCHEMA, BenchConfig, run_bench
from cmpf.bench.parity import format_table
from cmpf.errors import CmpfError, InputError
from cmpf.manifest import PRECISIONS, Manifest, parse_precision
from cmpf.predictor import ModelSource, load_predictor, options_with
from cmpf.vocabulary import Vocabulary

CSV_FIELDS = ("stage", "batch", "shape", "backend", "precision", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "ratio_p50")


@dataclass(frozen=True)
class Combination:
    backend: Backend
    precision: Optional[str] = None  # a --precision value; None: fp32

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision or 'fp32'}"


def parse_backends(text: Optional[str], default: Backend) -> tuple[Backend, ...]:
    """``onnxruntime,aoti`` → backends (an unknown name is an InputError listing the valid ones)."""
    names = [s.strip() for s in (text or "").split(",") if s.strip()]
    return tuple(Backend.parse(n) for n in names) or (default,)


def parse_precisions(text: Optional[str]) -> tuple[Optional[str], ...]:
    """``fp32,int8`` → two precisions; ``sam_image_encoder=int8,decoder=fp16`` → one per-graph plan; plans
    and names mix with ``;``: ``fp32;sam_image_encoder=int8,decoder=fp16``."""
    if not text:
        return (None,)
    items = [s.strip() for s in text.split(";")] if ";" in text else (
        [text] if "=" in text else [s.strip() for s in text.split(",")])
    for item in items:
        if "=" not in item and item not in PRECISIONS:
            raise InputError(f"--precision {text!r}: unknown precision {item!r}; give names from "
                             f"{', '.join(PRECISIONS)} ('fp32,int8') or GRAPH=P plans separated by ';'")
    return tuple(i for i in items if i)


def combinations(backends: tuple[Backend, ...], precisions: tuple[Optional[str], ...],
                 source: ModelSource) -> list[Combination]:
    """Every backend × precision, in the order given (the first is the baseline); per-graph plans are checked
    against the artifacts' graphs here, so a typo is an error and not a skipped combination."""
    if source.artifacts:
        graphs = Manifest.read(source.artifacts).graphs
        for p in precisions:
            if p and "=" in p:
                parse_precision(p, graphs)
    return [Combination(b, None if p == "fp32" else p) for b in backends for p in precisions]


def run_matrix(source: ModelSource, combos: list[Combination], image: torch.Tensor, vocabulary: Vocabulary,
               cfg: BenchConfig, overrides: Optional[dict] = None) -> dict:
    """Bench every combination in turn (one loaded at a time); see the module docstring.

    Args:
        overrides: ``cmpf.predictor.options_with`` overrides of each predictor's inference options.
    """
    runs, skipped = [], []
    for combo in combos:
        try:
            side = dataclasses.replace(source, precision=combo.precision)
            predictor = load_predictor(side, combo.backend, cfg.device)
        except (CmpfError, ImportError) as e:  # a combination this machine or this directory cannot run
            reason = str(e) if isinstance(e, CmpfError) else f"{type(e).__name__}: {e}"
            skipped.append({"backend": str(combo.backend), "precision": combo.precision or "fp32",
                            "reason": " ".join(reason.split())})
            continue
        try:
            predictor.options = options_with(predictor.options, **(overrides or {}))
            runs.append(run_bench(predictor, image, vocabulary, cfg, side).to_json())
        finally:
            predictor.close()
            del predictor
            gc.collect()  # the closed sessions' thread pools go before the next combination is timed
    if not runs:
        raise InputError(f"no backend × precision combination could run; {skipped[0]['backend']} "
                         f"{skipped[0]['precision']}: {skipped[0]['reason']}")
    return matrix_report(runs, skipped)


def matrix_report(runs: list[dict], skipped: list[dict]) -> dict:
    """The matrix JSON of bench reports (the first is the baseline) and skipped combinations."""
    base = runs[0]
    return {"schema": MATRIX_SCHEMA, "model": base["model"], "baseline": _label(base),
            "environment": base["environment"], "settings": base["settings"],
            "combinations": [{"backend": r["backend"], "precision": r["precision"], "ran": True} for r in runs]
            + [{**s, "ran": False} for s in skipped],
            "ratios": ratios(runs), "runs": runs,
            "notes": base["notes"] + ["peak RSS: of the one process, so it can only grow from one combination to "
                                      "the next (they ran in the order listed)"]}


def _label(report: dict) -> str:
    return f"{report['backend']} {report['precision']}"


def _key(row: dict) -> tuple:
    return row["stage"], row["batch"], shape_text(row["shape"])


def ratios(runs: list[dict]) -> list[dict]:
    """Per (stage, batch, shape) of the baseline and per run: p50 and its ratio to the baseline's."""
    base = {_key(r): r for r in runs[0]["stages"]}
    out = []
    for run in runs:
        for r in run["stages"]:
            if _key(r) in base:
                out.append({"stage": r["stage"], "batch": r["batch"], "shape": r["shape"], "backend": run["backend"],
                            "precision": run["precision"], **{k: r[k] for k in ("p50_ms", "p90_ms", "p99_ms",
                                                                               "mean_ms")},
                            "ratio_p50": r["p50_ms"] / base[_key(r)]["p50_ms"]})
    return out


def matrix_markdown(matrix: dict) -> str:
    runs = matrix["runs"]
    labels = [_label(r) for r in runs]
    cells: dict[tuple, dict[str, str]] = {}
    for r in matrix["ratios"]:
        cells.setdefault(_key(r), {})[f"{r['backend']} {r['precision']}"] = f"{r['p50_ms']:.2f} ({r['ratio_p50']:.2f})"
    tput = {(_label(run), t["batch"], shape_text(t["shape"])): t["images_per_s"] for run in runs
            for t in run["throughput"]}
    base = [(t["batch"], shape_text(t["shape"])) for t in runs[0]["throughput"]]
    lines = [f"# cmpf bench: {matrix['model']}, backend × precision", "",
             f"p50 ms (ratio to `{matrix['baseline']}`, below 1: faster)", "",
             *environment_lines(matrix["environment"]), ""]
    lines += [f"- skipped `{c['backend']} {c['precision']}`: {c['reason']}" for c in matrix["combinations"]
              if not c["ran"]]
    lines += ["", format_table(["stage", "batch", "shape", *labels],
                               [[*k, *(v.get(lab, "-") for lab in labels)] for k, v in cells.items()]), "",
              format_table(["batch", "shape", *(f"{lab} images/s" for lab in labels)],
                           [[b, s, *(_tput(tput, lab, b, s, labels[0]) for lab in labels)] for b, s in base]), ""]
    lines += [f"note: {n}" for n in matrix["notes"]]
    return "\n".join(lines) + "\n"


def _tput(tput: dict, label: str, batch: int, shape: str, baseline: str) -> str:
    value = tput.get((label, batch, shape))
    return "-" if value is None else f"{value:.3f} ({value / tput[(baseline, batch, shape)]:.2f})"


def matrix_csv(matrix: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in matrix["ratios"]:
        writer.writerow({**row, "shape": shape_text(row["shape"])})
    return buf.getvalue()
