"""``cmpf eval`` for Fusioner: zero-shot PASCAL-5i / COCO-20i, the official protocol and metric.

Consumes a model source (``FusionerSource``), a dataset root with HSNet's split files and a fold;
runs every evaluated episode of the fold in the official order (``cmpf.data.fewshot.episodes``) at
original resolution, one class per episode (K = 1, the only evaluated setting), with the dataset's
own normalisation, and accumulates HSNet's metric (``cmpf.data.fewshot_metric``). Produces mIoU
over the fold's novel classes and FB-IoU (fractions), per-class IoU and the episode count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Optional

from cmpf.data.fewshot import FewShotDataset, class_names, episodes, load_episode, novel_labels
from cmpf.data.fewshot_metric import FewShotIoU
from cmpf.errors import InputError
from cmpf.fusioner.inference import TextEmbeddingCache, segment
from cmpf.fusioner.run import FusionerSource, load_graphs

NORMALISATION = {"pascal-5i": "pascal", "coco-20i": "coco"}  # ``FU:dataset/augumenter.py``: per dataset


@dataclass(frozen=True)
class FusionerEvalConfig:
    dataset: FewShotDataset
    fold: int
    data_root: str
    splits: str  # HSNet's data/splits folder (pascal/val/fold<i>.txt, coco/val/fold<i>.pkl)
    source: FusionerSource
    limit: Optional[int] = None  # the first N episodes only


def evaluate_fusioner(cfg: FusionerEvalConfig, progress: bool = True) -> dict:
    """mIoU / FB-IoU of the fold's episodes; the JSON-ready report."""
    if cfg.limit is not None and cfg.limit < 1:
        raise InputError("--limit must be >= 1")
    todo = episodes(cfg.dataset, cfg.data_root, cfg.splits, cfg.fold, "val")
    if cfg.limit:
        todo = todo[:cfg.limit]
    if not todo:
        raise InputError(f"{cfg.splits}: no {cfg.dataset} fold-{cfg.fold} episodes")
    missing = [str(p) for e in todo for p in (e.image, e.mask) if not p.is_file()][:3]
    if missing:  # before the model loads
        raise InputError(f"{missing[0]}: missing ({len(missing)} of the first files checked); check --data-root "
                         f"(layout in cmpf.data.fewshot)")
    graphs, options, backend = load_graphs(cfg.source)
    options = replace(options, mode="per-class", normalisation=NORMALISATION[cfg.dataset])
    cache = TextEmbeddingCache(graphs)
    metric = FewShotIoU(len(class_names(cfg.dataset)))
    start = time.perf_counter()
    for i, episode in enumerate(todo):
        image, gt, ignore = load_episode(episode)
        seg = segment(graphs, image, [episode.class_name], options, text_cache=cache)
        metric.update(seg.masks[0].numpy(), gt, ignore, episode.label)
        if progress and (i + 1) % 50 == 0:
            print(f"[{i + 1}/{len(todo)}] {time.perf_counter() - start:.0f} s", flush=True)
    scores = metric.compute()
    names = class_names(cfg.dataset)
    return {
        "dataset": cfg.dataset, "fold": cfg.fold, "mode": options.mode, "normalisation": options.normalisation,
        "backend": str(backend), "episodes_listed": len(todo), "episodes_scored": scores["episodes"],
        "miou": scores["miou"], "fbiou": scores["fbiou"],
        "per_class_iou": {names[c]: v for c, v in scores["per_class"].items()},
        "novel_classes": [names[c] for c in novel_labels(cfg.dataset, cfg.fold)],
        "seconds": time.perf_counter() - start,
    }


def report_table(report: dict) -> str:
    rows = [f"{report['dataset']} fold {report['fold']} ({report['episodes_scored']} episodes, {report['mode']}, "
            f"{report['backend']}): mIoU {100 * report['miou']:.2f}  FB-IoU {100 * report['fbiou']:.2f}"]
    rows += [f"  {name:14s} {100 * iou:6.2f}" for name, iou in report["per_class_iou"].items()]
    return "\n".join(rows)
