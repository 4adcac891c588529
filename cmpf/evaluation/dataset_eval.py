"""``cmpf eval``: run the pipeline over a benchmark dataset and compute the paper's metrics.

Consumes a :class:`~cmpf.data.registry.DatasetSpec` (files checked with ``check_dataset``), the
dataset's vocabulary and a way to segment one image (the pipeline with runners, or any
``predict(image, sample) -> Segmentation``); produces ``{"panoptic"|"semantic"|"instance": result}``
in the formats of ``cmpf metrics`` (percent, ``None`` where undefined).

Class ids follow the detectron2 / FrozenSeg registrations (``register_*.py``): contiguous class
``i`` is the ``i``-th category of the panoptic JSON (COCO, ADE20K, Mapillary: file order = id order;
Cityscapes: = trainId order; BDD: id ``i + 1``); semantic label images already hold contiguous ids
(``ignore_label`` apart), so the argmax is compared as is; instance results carry the panoptic
category id of a thing class (COCO and ADE20K instance JSONs share those ids) or, for instance-only
sets (LVIS), the ``i``-th smallest category id of the instance JSON (detectron2's COCO/LVIS loaders).
Cityscapes instance ground truth is derived from the panoptic annotation (thing segments).

Distributed (``torchrun``): each rank segments a contiguous shard of the images (detectron2's
``InferenceSampler``); per-image panoptic counts, instance results and the rank's semantic confusion
matrix are gathered to rank 0 and merged in image order, so any number of ranks gives bit-identical
metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from cmpf.data.registry import DATASETS, DatasetSpec, Task, check_dataset, dataset_root
from cmpf.evaluation.instance import InstanceAccumulator
from cmpf.evaluation.panoptic import PanopticAccumulator, read_panoptic_png
from cmpf.evaluation.report import (
    MetricsInputError,
    format_instance,
    format_panoptic,
    format_semantic,
)
from cmpf.evaluation.semantic import SemanticAccumulator, read_label_png
from cmpf.postprocess import Segmentation
from cmpf.vocabulary import Vocabulary, load_vocabulary_file

TRAIN_VOCABULARY = "coco_panoptic_with_prompt_eng.txt"  # the official models are trained on COCO panoptic


# ----------------------------------------------------------------------------------------------
# dataset preparation


@dataclass(frozen=True)
class Sample:
    """One evaluation image and where its ground truth is.

    Attributes:
        index: position in the (limited) dataset; shards and merges are ordered by it.
        image_path: the RGB image.
        image_id: the panoptic annotation's ``image_id`` (else the image file stem).
        panoptic_png: ground-truth panoptic PNG (panoptic or derived-instance evaluation).
        segments_info: its ground-truth segments, with the dataset's category ids.
        semantic_path: ground-truth label image (semantic evaluation).
        instance_image_id: the image's id in the instance JSON (instance evaluation from a JSON).
    """

    index: int
    image_path: Path
    image_id: Any
    panoptic_png: Optional[Path] = None
    segments_info: tuple[dict, ...] = ()
    semantic_path: Optional[Path] = None
    instance_image_id: Any = None


@dataclass(frozen=True)
class ClassMapping:
    """Contiguous class index (the model's output) → the dataset's ids.

    Attributes:
        panoptic_ids: contiguous index → panoptic category id (None without a panoptic JSON).
        instance_ids: contiguous index → instance category id, None for classes that are not
            evaluated as instances (stuff); None without instance evaluation.
    """

    panoptic_ids: Optional[tuple[int, ...]] = None
    instance_ids: Optional[tuple[Optional[int], ...]] = None


@dataclass
class PreparedDataset:
    """Everything the evaluation loop needs, built and checked before any model is loaded."""

    spec: DatasetSpec
    tasks: tuple[Task, ...]
    paths: dict[str, Path]
    vocabulary: Vocabulary
    mapping: ClassMapping
    samples: list[Sample]
    panoptic_categories: list[dict] = field(default_factory=list)
    instance_gt: Optional[dict] = None  # the instance JSON; None when derived from panoptic PNGs
    instance_categories: list[dict] = field(default_factory=list)

    @property
    def derive_instances(self) -> bool:
        return "instance" in self.tasks and self.instance_gt is None


def resolve_dataset(name: Union[str, DatasetSpec]) -> DatasetSpec:
    """A registered dataset by name (or a spec passed through)."""
    if isinstance(name, DatasetSpec):
        return name
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"expected the file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def _load_vocabulary(spec: DatasetSpec, paths: Mapping[str, Path], vocab_dir: Optional[str]) -> tuple:
    """The dataset's classes (synonym tuples) in contiguous order."""
    if spec.vocabulary is None:
        return tuple((name,) for name in spec.class_names)
    if vocab_dir is None:
        raise ValueError(f"{spec.name} needs --vocab-dir (a directory holding {spec.vocabulary})")
    classes = load_vocabulary_file(paths["vocabulary"]).classes[spec.vocabulary_skip :]
    if not classes:
        raise ValueError(f"{paths['vocabulary']} has no class after skipping {spec.vocabulary_skip}")
    return classes


def _panoptic_categories(info: Mapping[str, Any], path: Path, num_classes: int) -> list[dict]:
    cats = info["categories"]
    for c in cats:
        if not isinstance(c, Mapping) or "id" not in c or "isthing" not in c:
            raise ValueError(f"{path} is malformed: every category needs 'id' and 'isthing'")
    if len(cats) != num_classes:
        raise ValueError(
            f"the vocabulary has {num_classes} classes but {path} lists {len(cats)} categories"
        )
    return [dict(c) for c in cats]


class _FileIndex:
    """Files under a directory ending with ``suffix``, by relative key and by base name (lazy)."""

    def __init__(self, root: Path, suffix: str) -> None:
        self.root, self.suffix = root, suffix
        self._by_rel: Optional[dict[str, Path]] = None
        self._by_base: dict[str, Path] = {}

    def _build(self) -> None:
        self._by_rel = {}
        for p in sorted(self.root.rglob(f"*{self.suffix}")):
            if p.is_file():
                key = str(p.relative_to(self.root))[: -len(self.suffix)]
                self._by_rel[key] = p
                self._by_base.setdefault(Path(key).name, p)

    def files(self) -> list[Path]:
        if self._by_rel is None:
            self._build()
        return list(self._by_rel.values())  # type: ignore[union-attr]

    def find(self, key: str) -> Optional[Path]:
        """The file whose relative path (or, failing that, base name) without suffix is ``key``."""
        if self._by_rel is None:
            self._build()
        return self._by_rel.get(key) or self._by_base.get(Path(key).name)  # type: ignore[union-attr]


def _image_key(image_path: Path, image_dir: Path, suffix: str) -> str:
    rel = str(image_path.relative_to(image_dir)) if image_path.is_relative_to(image_dir) else image_path.name
    return _strip_suffix(rel, suffix)


def _strip_suffix(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if name.endswith(suffix) else str(Path(name).with_suffix(""))


def _panoptic_image(ann: Mapping, images: Mapping[Any, Mapping], image_dir: Path, index: _FileIndex,
                    suffix: str) -> Path:
    """The image of a panoptic annotation: the JSON ``images`` entry's file, else ``image_id`` + suffix
    (Cityscapes), else the PNG's stem + suffix (COCO, ADE20K, Mapillary, BDD); searched recursively."""
    entry = images.get(ann["image_id"]) or {}
    names = [str(n) for n in (entry.get("file_name"), f"{ann['image_id']}{suffix}",
                              Path(str(ann["file_name"])).stem + suffix) if n]
    for name in names:
        if (image_dir / name).is_file():
            return image_dir / name
    for name in names:
        found = index.find(_strip_suffix(name, suffix))
        if found is not None:
            return found
    raise FileNotFoundError(f"expected the image {image_dir / names[0]} (panoptic annotation {ann['file_name']})")


def _instance_image_name(img: Mapping) -> Optional[str]:
    if img.get("file_name"):
        return Path(str(img["file_name"])).name
    if img.get("coco_url"):  # LVIS
        return str(img["coco_url"]).rsplit("/", 1)[-1]
    return None


def prepare_dataset(
    spec: Union[str, DatasetSpec],
    data_root: Union[str, os.PathLike, None] = None,
    vocab_dir: Union[str, os.PathLike, None] = None,
    tasks: Optional[Sequence[Task]] = None,
    limit: Optional[int] = None,
) -> PreparedDataset:
    """Check a dataset and list its samples with their ground truth.

    Args:
        spec: a registered dataset name or a spec.
        data_root: the datasets root (default ``$CMPF_DATASETS``).
        vocab_dir: directory with the official ``*_with_prompt_eng.txt`` files.
        tasks: evaluate only these tasks (default: all the dataset offers).
        limit: keep only the first ``limit`` images.
    Raises:
        FileNotFoundError: a file is missing; the message names it.
        ValueError: a file is malformed or does not agree with the vocabulary.
    """
    spec = resolve_dataset(spec)
    tasks = tuple(spec.tasks if not tasks else tasks)
    paths = check_dataset(spec, data_root, tasks, vocab_dir)
    root = dataset_root(data_root)
    classes = _load_vocabulary(spec, paths, None if vocab_dir is None else str(vocab_dir))
    num_classes = len(classes)

    # panoptic JSON: contiguous order and thing flags (also read when only the semantic task is asked)
    pan_json = paths.get("panoptic_json")
    if pan_json is None and spec.panoptic_json and (root / spec.panoptic_json).is_file():
        pan_json = (root / spec.panoptic_json).resolve()
    pan_info = _read_json(pan_json) if pan_json is not None else None
    if pan_info is not None and not isinstance(pan_info.get("categories") if isinstance(pan_info, dict) else None,
                                               list):
        raise ValueError(f"{pan_json} is malformed: expected a 'categories' list")
    pan_cats = _panoptic_categories(pan_info, pan_json, num_classes) if pan_info is not None else []
    panoptic_ids = tuple(int(c["id"]) for c in pan_cats) if pan_cats else None
    is_thing = tuple(bool(c["isthing"]) for c in pan_cats) if pan_cats else (True,) * num_classes

    instance_gt, instance_ids, inst_cats = None, None, []
    if "instance" in tasks:
        if "instances_json" in paths:
            instance_gt = _read_json(paths["instances_json"])
            gt_ids = [int(c["id"]) for c in instance_gt["categories"]]
            if panoptic_ids is not None:
                unknown = sorted(set(gt_ids) - set(panoptic_ids))
                if unknown:
                    raise ValueError(
                        f"{paths['instances_json']} has category ids {unknown[:5]} that {pan_json} does not list"
                    )
                instance_ids = tuple(pid if thing else None for pid, thing in zip(panoptic_ids, is_thing))
            else:
                if len(gt_ids) != num_classes:
                    raise ValueError(
                        f"the vocabulary has {num_classes} classes but {paths['instances_json']} lists "
                        f"{len(gt_ids)} categories"
                    )
                instance_ids = tuple(sorted(gt_ids))
            inst_cats = list(instance_gt["categories"])
        else:  # derived from the panoptic annotation (Cityscapes)
            assert panoptic_ids is not None
            instance_ids = tuple(pid if thing else None for pid, thing in zip(panoptic_ids, is_thing))
            inst_cats = [{"id": int(c["id"]), "name": str(c.get("name", ""))} for c in pan_cats if c["isthing"]]

    vocabulary = Vocabulary(tuple(classes), is_thing)
    mapping = ClassMapping(panoptic_ids, instance_ids)
    samples = _list_samples(spec, tasks, paths, pan_info, pan_json, instance_gt, limit)
    if not samples:
        raise ValueError(f"{spec.name}: no image to evaluate under {paths['image_dir']}")
    return PreparedDataset(spec, tasks, paths, vocabulary, mapping, samples, pan_cats, instance_gt, inst_cats)


def _list_samples(spec: DatasetSpec, tasks: tuple[Task, ...], paths: Mapping[str, Path], pan_info: Optional[dict],
                  pan_json: Optional[Path], instance_gt: Optional[dict], limit: Optional[int]) -> list[Sample]:
    image_dir = paths["image_dir"]
    images = _FileIndex(image_dir, spec.image_suffix)
    use_panoptic = "panoptic" in tasks or ("instance" in tasks and instance_gt is None)
    entries: list[dict] = []
    if use_panoptic:
        assert pan_info is not None and pan_json is not None
        by_id = {img.get("id"): img for img in pan_info.get("images", []) if isinstance(img, Mapping)}
        anns = pan_info["annotations"]
        for ann in anns[:limit] if limit is not None else anns:
            if not isinstance(ann, Mapping) or not {"image_id", "file_name", "segments_info"} <= set(ann):
                raise ValueError(f"{pan_json} is malformed: every annotation needs image_id, file_name, segments_info")
            png = paths["panoptic_dir"] / ann["file_name"]
            if not png.is_file():
                raise FileNotFoundError(f"expected the panoptic PNG {png} listed in {pan_json}")
            entries.append({
                "image_path": _panoptic_image(ann, by_id, image_dir, images, spec.image_suffix),
                "image_id": ann["image_id"],
                "panoptic_png": png,
                "segments_info": tuple(dict(s) for s in ann["segments_info"]),
            })  # fmt: skip
    elif "semantic" in tasks:
        files = images.files()
        for p in files[:limit] if limit is not None else files:
            entries.append({"image_path": p, "image_id": _image_key(p, image_dir, spec.image_suffix)})
    else:  # instance only (LVIS): the images the instance JSON lists
        assert instance_gt is not None
        imgs = instance_gt["images"]
        for img in imgs[:limit] if limit is not None else imgs:
            name = _instance_image_name(img)
            if name is None:
                raise ValueError(f"{paths['instances_json']} is malformed: image {img.get('id')} has no file_name")
            rel = str(img["coco_url"]).split("/")[-2:] if not img.get("file_name") else [img["file_name"]]
            path = image_dir.joinpath(*rel)
            if not path.is_file():
                path = images.find(Path(name).stem) or path
            if not path.is_file():
                raise FileNotFoundError(f"expected the image {path} listed in {paths['instances_json']}")
            entries.append({"image_path": path, "image_id": img["id"], "instance_image_id": img["id"]})

    if "semantic" in tasks:
        labels = _FileIndex(paths["semantic_dir"], spec.semantic_suffix)
        for e in entries:
            key = _image_key(e["image_path"], image_dir, spec.image_suffix)
            found = labels.find(key)
            if found is None:
                raise FileNotFoundError(
                    f"expected the semantic label file {paths['semantic_dir'] / (key + spec.semantic_suffix)}"
                )
            e["semantic_path"] = found
    if "instance" in tasks and instance_gt is not None:
        by_name = {}
        for img in instance_gt["images"]:
            name = _instance_image_name(img)
            if name is not None:
                by_name[name] = img["id"]
                by_name.setdefault(Path(name).stem, img["id"])
        for e in entries:
            if "instance_image_id" in e:
                continue
            p = e["image_path"]
            iid = by_name.get(p.name, by_name.get(p.stem))
            if iid is None:
                raise ValueError(f"image {p.name} is not listed in {paths['instances_json']}")
            e["instance_image_id"] = iid
    return [Sample(index=i, **e) for i, e in enumerate(entries)]


# ----------------------------------------------------------------------------------------------
# per-image evaluation


def _rle(masks: np.ndarray) -> list[dict]:
    """(N, H, W) bool → COCO RLEs with str counts (detectron2's ``instances_to_coco_json``)."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return list(rles)


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _as_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


class _ShardState:
    """What one rank accumulates: per-image records plus its semantic confusion matrix."""

    def __init__(self, data: PreparedDataset) -> None:
        self.data = data
        self.records: list[dict] = []
        self.semantic = (
            SemanticAccumulator(len(data.vocabulary), data.spec.ignore_label) if "semantic" in data.tasks else None
        )

    def add(self, sample: Sample, seg: Segmentation) -> None:
        data, tasks = self.data, self.data.tasks
        record: dict[str, Any] = {"index": sample.index}
        gt_ids = None
        if "panoptic" in tasks or data.derive_instances:
            gt_ids = read_panoptic_png(sample.panoptic_png)
        if "panoptic" in tasks:
            ids = data.mapping.panoptic_ids
            pred_segments = [
                {"id": int(s["id"]), "category_id": ids[int(s["category_id"])], "isthing": bool(s["isthing"])}
                for s in seg.segments
            ]
            acc = PanopticAccumulator(data.panoptic_categories)
            acc.add(gt_ids, sample.segments_info, _as_numpy(seg.panoptic).astype(np.int64), pred_segments,
                    image_id=sample.image_id)
            record["panoptic"] = acc.counts()
        if self.semantic is not None:
            gt = read_label_png(sample.semantic_path)
            pred = _as_numpy(seg.semantic_labels).astype(np.int64)
            self.semantic.add(gt, pred, name=str(sample.semantic_path))
        if "instance" in tasks:
            record["instances"] = self._instances(sample, seg)
            if data.derive_instances:
                record["instance_gt"] = self._derived_gt(sample, gt_ids)
        self.records.append(record)

    def _instances(self, sample: Sample, seg: Segmentation) -> list[dict]:
        ids = self.data.mapping.instance_ids
        image_id = sample.index + 1 if self.data.derive_instances else sample.instance_image_id
        scores = _as_numpy(seg.instance_scores).astype(np.float64)
        classes = _as_numpy(seg.instance_classes).astype(np.int64)
        rles = _rle(_as_numpy(seg.instance_masks).astype(bool))
        out = []
        for score, cls, rle in zip(scores.tolist(), classes.tolist(), rles):
            category = ids[cls]
            if category is None:  # not a thing class of this dataset
                continue
            out.append({"image_id": image_id, "category_id": category, "segmentation": rle, "score": score})
        return out

    def _derived_gt(self, sample: Sample, gt_ids: np.ndarray) -> dict:
        """COCO instance annotations of the thing segments of a panoptic annotation."""
        things = {int(c["id"]) for c in self.data.panoptic_categories if c["isthing"]}
        segs = [s for s in sample.segments_info if int(s["category_id"]) in things]
        masks = np.stack([gt_ids == int(s["id"]) for s in segs]) if segs else np.zeros((0,) + gt_ids.shape, bool)
        anns = []
        for s, m, rle in zip(segs, masks, _rle(masks)):
            if not m.any():
                continue
            anns.append({"image_id": sample.index + 1, "category_id": int(s["category_id"]), "segmentation": rle,
                         "area": int(m.sum()), "bbox": _bbox(m), "iscrowd": int(s.get("iscrowd", 0))})
        image = {"id": sample.index + 1, "file_name": sample.image_path.name,
                 "height": int(gt_ids.shape[0]), "width": int(gt_ids.shape[1])}
        return {"image": image, "annotations": anns}

    def payload(self) -> dict:
        return {
            "records": self.records,
            "semantic": None if self.semantic is None else (self.semantic.conf_matrix, self.semantic.num_images),
        }


# ----------------------------------------------------------------------------------------------
# distribution and reduction


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> tuple[bool, str]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1``; pick this rank's device.

    Returns:
        (whether this call created the group, the device: ``cuda`` becomes ``cuda:LOCAL_RANK``).
    """
    created = False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device.startswith("cuda")
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available")
        index = torch.device(device).index
        if index is None:
            index = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{index}"
        torch.cuda.set_device(index)  # NCCL object collectives use the current device
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    return created, device


def shard(num: int, rank: int, world: int) -> range:
    """Contiguous shard of ``range(num)`` for ``rank`` (detectron2's ``InferenceSampler``)."""
    size = (num - 1) // world + 1 if num else 0
    return range(min(size * rank, num), min(size * (rank + 1), num))


def _gather_to_main(obj: Any) -> Optional[list]:
    rank, world = dist_info()
    if world == 1:
        return [obj]
    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


_EXPECTED = (MetricsInputError, FileNotFoundError, ValueError)


def _raise_if_any_failed(error: Optional[tuple[bool, str]]) -> None:
    """Every rank learns whether any rank failed (``(expected, message)``), so none waits forever in the
    gather; all raise the first failure, as ``ValueError`` when it was an expected input error."""
    rank, world = dist_info()
    errors: list = [None] * world
    dist.all_gather_object(errors, error)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        r, (expected, message) = failed[0]
        message = message if r == rank else f"rank {r}: {message}"
        raise ValueError(message) if expected else RuntimeError(message)


def _merge_panoptic(acc: PanopticAccumulator, counts: Mapping[int, Sequence]) -> None:
    """Add one image's per-category (IoU sum, TP, FP, FN) to ``acc`` (the accumulator has no merge API)."""
    for cat, (iou, tp, fp, fn) in counts.items():
        stat = acc._stats[cat]  # noqa: SLF001
        stat.iou += iou
        stat.tp += tp
        stat.fp += fp
        stat.fn += fn
    acc.num_images += 1


def _instance_ground_truth(data: PreparedDataset, records: Sequence[dict]) -> dict:
    """The instance GT restricted to the evaluated images (detectron2 passes ``img_ids``)."""
    if data.instance_gt is None:
        images, anns = [], []
        for rec in records:
            images.append(rec["instance_gt"]["image"])
            for a in rec["instance_gt"]["annotations"]:
                anns.append({**a, "id": len(anns) + 1})
        return {"images": images, "annotations": anns, "categories": data.instance_categories}
    done = {data.samples[rec["index"]].instance_image_id for rec in records}
    gt = data.instance_gt
    return {
        "images": [img for img in gt["images"] if img["id"] in done],
        # LVIS annotations have no iscrowd; pycocotools needs it
        "annotations": [{"iscrowd": 0, **a} for a in gt["annotations"] if a["image_id"] in done],
        "categories": list(gt["categories"]),
    }


def reduce_payloads(data: PreparedDataset, payloads: Sequence[dict]) -> dict[str, Any]:
    """Merge the per-rank payloads (any split of the images) into the metrics, in image order."""
    records = sorted((r for p in payloads for r in p["records"]), key=lambda r: r["index"])
    results: dict[str, Any] = {}
    if "panoptic" in data.tasks:
        acc = PanopticAccumulator(data.panoptic_categories)
        for rec in records:
            _merge_panoptic(acc, rec["panoptic"])
        results["panoptic"] = acc.result()
    if "semantic" in data.tasks:
        sem = SemanticAccumulator(len(data.vocabulary), data.spec.ignore_label)
        for p in payloads:
            matrix, n = p["semantic"]
            sem.conf_matrix += matrix
            sem.num_images += n
        results["semantic"] = sem.result()
    if "instance" in data.tasks:
        inst = InstanceAccumulator(_instance_ground_truth(data, records))
        inst.add([pred for rec in records for pred in rec["instances"]])
        results["instance"] = inst.result()
    return results


# ----------------------------------------------------------------------------------------------
# the loop

Predictor = Callable[[torch.Tensor, Sample], Segmentation]


def evaluate_prepared(
    data: PreparedDataset, predict: Predictor, progress: bool = True, load_image: Optional[Callable] = None
) -> Optional[dict[str, Any]]:
    """Segment this rank's shard, gather to rank 0 and reduce.

    Args:
        data: from :func:`prepare_dataset`.
        predict: ``(uint8 (3, H, W) image, sample) -> Segmentation`` at the image's size.
        progress: tqdm bar on rank 0.
        load_image: image reader (default :func:`cmpf.preprocess.load_image`).
    Returns:
        ``{"panoptic"|"semantic"|"instance": result}`` on rank 0, None on the other ranks.
    """
    if load_image is None:
        from cmpf.preprocess import load_image
    rank, world = dist_info()
    state = _ShardState(data)
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
        _raise_if_any_failed(error)
    payloads = _gather_to_main(state.payload())
    if rank != 0:
        return None
    return reduce_payloads(data, payloads)


@dataclass(frozen=True)
class EvalConfig:
    """``cmpf eval`` options (see ``cmpf eval --help``)."""

    dataset: Union[str, DatasetSpec]
    data_root: Optional[str] = None
    vocab_dir: Optional[str] = None
    model: Optional[str] = None
    checkpoint: Optional[str] = None
    clip_weights: Optional[str] = None
    sam_weights: Optional[str] = None
    artifacts: Optional[str] = None
    backend: str = "onnxruntime"
    train_vocab: Optional[str] = None
    tasks: Optional[tuple[Task, ...]] = None
    limit: Optional[int] = None
    min_size: Optional[int] = None  # override the dataset's test resolution
    max_size: Optional[int] = None
    resize: bool = True
    device: str = "cpu"
    progress: bool = True
    seed: int = 0  # random-weight presets are built identically on every rank


def seen_mask(vocabulary: Vocabulary, train_vocab: Optional[str], vocab_dir: Optional[str]) -> tuple[list[bool], str]:
    """Seen-class flags (ensemble α vs β) and where they came from.

    ``train_vocab`` if given, else ``<vocab_dir>/coco_panoptic_with_prompt_eng.txt`` if present (the
    official models' training set), else every class counts as unseen.
    """
    path = train_vocab
    if path is None and vocab_dir is not None and (Path(vocab_dir) / TRAIN_VOCABULARY).is_file():
        path = str(Path(vocab_dir) / TRAIN_VOCABULARY)
    if path is None:
        return [False] * len(vocabulary), "none (every class unseen)"
    return vocabulary.seen_mask(load_vocabulary_file(path)), path


def pipeline_predictor(cfg: EvalConfig, data: PreparedDataset, device: str, quiet: bool = False) -> Predictor:
    """Build the runners (checkpoint or artifacts) and return the per-image pipeline call."""
    from cmpf.pipeline import PipelineOptions, TextCache, segment
    from cmpf.run import RunConfig, build_runners

    run_cfg = RunConfig(
        images=(), out_dir="", model=cfg.model, checkpoint=cfg.checkpoint, clip_weights=cfg.clip_weights,
        sam_weights=cfg.sam_weights, artifacts=cfg.artifacts, backend=cfg.backend, device=device,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        try:
            runners, model_cfg = build_runners(run_cfg)
        except ImportError as e:
            raise ValueError(f"--artifacts needs the artifact runtime, which is not available here ({e})") from None
    spec = data.spec
    model_cfg = dataclasses.replace(
        model_cfg,
        min_size_test=cfg.min_size or spec.min_size_test,
        max_size_test=cfg.max_size or spec.max_size_test,
        object_mask_threshold=spec.object_mask_threshold,
    )
    seen, _ = seen_mask(data.vocabulary, cfg.train_vocab, cfg.vocab_dir)
    options = PipelineOptions(resize=cfg.resize)
    text = TextCache().get(data.vocabulary, runners["text_encoder"], options.text_batch)
    vocabulary = data.vocabulary

    def predict(image: torch.Tensor, sample: Sample) -> Segmentation:
        with torch.inference_mode():
            result = segment([image], vocabulary, runners, model_cfg, seen, options, text=text, device=device)
        return result.segmentations[0]

    return predict


@dataclass
class EvalReport:
    """Rank 0's outcome: the JSON-ready results and the printed tables."""

    results: dict[str, Any]
    table: str


def evaluate(cfg: EvalConfig, predict: Optional[Predictor] = None) -> Optional[EvalReport]:
    """Evaluate a model (or ``predict``) on a dataset, across the current process group if any.

    Everything about the dataset is checked before the model is built.

    Returns:
        On rank 0, ``{"panoptic"|"semantic"|"instance": result, "meta": {...}}`` with its tables;
        None on the other ranks.
    """
    data = prepare_dataset(cfg.dataset, cfg.data_root, cfg.vocab_dir, cfg.tasks, cfg.limit)
    rank, world = dist_info()
    seen_from = seen_mask(data.vocabulary, cfg.train_vocab, cfg.vocab_dir)[1] if predict is None else None
    if predict is None:
        predict = pipeline_predictor(cfg, data, cfg.device, quiet=rank != 0)
    results = evaluate_prepared(data, predict, progress=cfg.progress)
    if results is None:
        return None
    results["meta"] = {
        "dataset": data.spec.name,
        "official_name": data.spec.official_name,
        "tasks": list(data.tasks),
        "num_images": len(data.samples),
        "model": cfg.model,
        "checkpoint": cfg.checkpoint,
        "artifacts": cfg.artifacts,
        "backend": cfg.backend if cfg.artifacts else "torch",
        "min_size_test": cfg.min_size or data.spec.min_size_test,
        "max_size_test": cfg.max_size or data.spec.max_size_test,
        "resize": cfg.resize,
        "object_mask_threshold": data.spec.object_mask_threshold,
        "train_vocab": seen_from,
        "world_size": world,
    }
    notes = _metric_notes(data)
    if notes:
        results["meta"]["notes"] = notes
    table = format_results(results, category_names(data))
    return EvalReport(results, "\n".join([table, *(f"note: {n}" for n in notes)]))


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
