"""``cmpf parity`` for a Fusioner export: its files on each backend against the eager model of the same weights.

Consumes an artifact directory (``cmpf export --model tiny-fusioner|fusioner-vitl14``), candidate
backends, images and class names; the reference is the eager model rebuilt from the manifest's
recorded weights (the ``torch`` backend). Per image and backend, the run is the official protocol
(``cmpf.fusioner.inference.segment``, fresh text caches) on both sides, compared at two levels:
- tensors, each a graph's output as the run used it: the class embeddings (text encoder), the first
  window's tokens (visual encoder) and the window-averaged logits (fusion decoder): L2-relative error
  within ``cmpf.tolerances.REL[(backend, "fp32")]``;
- image: per-class IoU of the binary masks (``MASK_IOU``) and the fraction of pixels with the same
  semantic label (``GATES["fp32"]["sem"]``).
A rule that breaks is a breach; ``ok`` is False when any is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cmpf.fusioner.inference import class_names_of, segment
from cmpf.fusioner.prompts import FusionerInputError
from cmpf.fusioner.run import FusionerSource, check_image_size, load_graphs, read_image
from cmpf.tolerances import GATES, MASK_IOU, REL, rel_error
from cmpf.vocabulary import Vocabulary

TENSORS = ("text_embeddings", "first_window_tokens", "logits")


@dataclass(frozen=True)
class FusionerParityConfig:
    artifacts: str
    backends: tuple[str, ...] = ("onnxruntime",)
    images: tuple[str, ...] = ()
    vocabulary: Optional[Vocabulary] = None  # default: the export's
    mode: Optional[str] = None  # default: the export's
    device: str = "cpu"


def fusioner_parity(cfg: FusionerParityConfig) -> dict:
    """The JSON report: one row per (backend, image, check) and the breaches."""
    manifest = FusionerSource(artifacts=cfg.artifacts).manifest()
    vocabulary = cfg.vocabulary or manifest.vocabulary
    if vocabulary is None:
        raise FusionerInputError("no classes: give --classes 'cat;dog' (or export with them)")
    names = class_names_of(vocabulary)
    if not cfg.images:
        raise FusionerInputError("no images: give --image FILE (at least 224 pixels a side)")
    for path in cfg.images:  # before any model loads
        check_image_size(Path(path), manifest.model.window_size)
    source = FusionerSource(artifacts=cfg.artifacts, backend="torch", device=cfg.device)
    reference, options, _ = load_graphs(source, manifest)
    if cfg.mode:
        options = dataclasses.replace(options, mode=cfg.mode)
    images = {path: read_image(Path(path)) for path in cfg.images}
    expected = {path: segment(reference, image, names, options) for path, image in images.items()}
    rows, breaches = [], []
    for backend in cfg.backends:
        candidate, _, _ = load_graphs(dataclasses.replace(source, backend=backend), manifest)
        bound = REL[(backend, "fp32")]
        for path, image in images.items():
            ref, got = expected[path], segment(candidate, image, names, options)
            for name in TENSORS:
                value = rel_error(getattr(got, name), getattr(ref, name))
                rows.append(_row(backend, path, name, "rel", value, "<=", bound, breaches))
            for k, cls in enumerate(names):
                a, b = got.masks[k].numpy(), ref.masks[k].numpy()
                union = (a | b).sum()
                iou = float((a & b).sum() / union) if union else 1.0
                rows.append(_row(backend, path, f"mask {cls}", "iou", iou, ">=", MASK_IOU, breaches))
            same = float((got.labels == ref.labels).float().mean())
            rows.append(_row(backend, path, "semantic", "sem", same, ">=", GATES["fp32"]["sem"][1], breaches))
    return {"artifacts": cfg.artifacts, "reference": "torch", "backends": list(cfg.backends), "mode": options.mode,
            "classes": list(names), "images": list(cfg.images), "rows": rows, "breaches": breaches,
            "ok": not breaches}


def _row(backend, image, what, metric, value, op, bound, breaches) -> dict:
    ok = bool(value <= bound) if op == "<=" else bool(value >= bound)  # NaN fails both
    row = {"backend": backend, "image": image, "check": what, "metric": metric, "value": value,
           "bound": f"{op} {bound:g}", "ok": ok}
    if not ok:
        breaches.append(f"{backend} {image} {what}: {metric} {value:.3g} not {op} {bound:g}")
    return row


def to_markdown(report: dict) -> str:
    lines = [f"Fusioner parity, {report['mode']} mode, reference torch, classes {';'.join(report['classes'])}", "",
             "| backend | image | check | value | bound | ok |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['image']} | {r['check']} ({r['metric']}) | {r['value']:.3g} | {r['bound']} | "
              f"{'yes' if r['ok'] else 'NO'} |" for r in report["rows"]]
    return "\n".join(lines)
