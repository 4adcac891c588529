"""Check a benchmark dataset and list its samples with their ground truth, before any model is loaded.

Consumes a :class:`~cmpf.data.registry.DatasetSpec` (files checked with ``check_dataset``) and the
dataset's vocabulary; produces a :class:`PreparedDataset`: the vocabulary with thing flags, the class
mapping of :mod:`cmpf.evaluation.id_mapping` and one :class:`Sample` per image, in evaluation order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from cmpf.data.registry import DATASETS, DatasetSpec, Task, check_dataset, dataset_root
from cmpf.evaluation.id_mapping import ClassMapping, instance_ids, panoptic_categories, panoptic_ids, thing_flags
from cmpf.vocabulary import Vocabulary, load_vocabulary_file


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
    pan_cats = panoptic_categories(pan_info, pan_json, num_classes) if pan_info is not None else []

    instance_gt, inst_ids, inst_cats = None, None, []
    if "instance" in tasks:
        if "instances_json" in paths:
            instance_gt = _read_json(paths["instances_json"])
        inst_ids, inst_cats = instance_ids(pan_cats, num_classes, instance_gt, paths.get("instances_json"), pan_json)

    vocabulary = Vocabulary(tuple(classes), thing_flags(pan_cats, num_classes))
    mapping = ClassMapping(panoptic_ids(pan_cats), inst_ids)
    samples = list_samples(spec, tasks, paths, pan_info, pan_json, instance_gt, limit)
    if not samples:
        raise ValueError(f"{spec.name}: no image to evaluate under {paths['image_dir']}")
    return PreparedDataset(spec, tasks, paths, vocabulary, mapping, samples, pan_cats, instance_gt, inst_cats)


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


# ----------------------------------------------------------------------------------------------
# listing the samples: images ↔ ground-truth files


def list_samples(spec: DatasetSpec, tasks: tuple[Task, ...], paths: Mapping[str, Path], pan_info: Optional[dict],
                 pan_json: Optional[Path], instance_gt: Optional[dict], limit: Optional[int]) -> list[Sample]:
    """The images to evaluate (the first ``limit``), each with its ground-truth files and ids.

    Images come from the panoptic JSON (panoptic or derived-instance evaluation), else from the image
    directory (semantic), else from the instance JSON (instance only, LVIS).
    """
    image_dir = paths["image_dir"]
    images = _FileIndex(image_dir, spec.image_suffix)
    if "panoptic" in tasks or ("instance" in tasks and instance_gt is None):
        assert pan_info is not None and pan_json is not None
        entries = _panoptic_entries(spec, paths, pan_info, pan_json, images, limit)
    elif "semantic" in tasks:
        files = images.files()
        entries = [{"image_path": p, "image_id": _image_key(p, image_dir, spec.image_suffix)}
                   for p in (files[:limit] if limit is not None else files)]
    else:  # instance only (LVIS): the images the instance JSON lists
        assert instance_gt is not None
        entries = _instance_entries(paths, instance_gt, images, limit)
    if "semantic" in tasks:
        _add_semantic_paths(entries, spec, paths)
    if "instance" in tasks and instance_gt is not None:
        _add_instance_image_ids(entries, paths, instance_gt)
    return [Sample(index=i, **e) for i, e in enumerate(entries)]


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


def _panoptic_entries(spec: DatasetSpec, paths: Mapping[str, Path], pan_info: dict, pan_json: Path,
                      images: _FileIndex, limit: Optional[int]) -> list[dict]:
    """One entry per panoptic annotation: its image, PNG and segments."""
    by_id = {img.get("id"): img for img in pan_info.get("images", []) if isinstance(img, Mapping)}
    anns = pan_info["annotations"]
    entries = []
    for ann in anns[:limit] if limit is not None else anns:
        if not isinstance(ann, Mapping) or not {"image_id", "file_name", "segments_info"} <= set(ann):
            raise ValueError(f"{pan_json} is malformed: every annotation needs image_id, file_name, segments_info")
        png = paths["panoptic_dir"] / ann["file_name"]
        if not png.is_file():
            raise FileNotFoundError(f"expected the panoptic PNG {png} listed in {pan_json}")
        entries.append({
            "image_path": _panoptic_image(ann, by_id, paths["image_dir"], images, spec.image_suffix),
            "image_id": ann["image_id"],
            "panoptic_png": png,
            "segments_info": tuple(dict(s) for s in ann["segments_info"]),
        })  # fmt: skip
    return entries


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


def _instance_entries(paths: Mapping[str, Path], instance_gt: dict, images: _FileIndex,
                      limit: Optional[int]) -> list[dict]:
    """One entry per image of the instance JSON (instance-only sets)."""
    imgs = instance_gt["images"]
    entries = []
    for img in imgs[:limit] if limit is not None else imgs:
        name = _instance_image_name(img)
        if name is None:
            raise ValueError(f"{paths['instances_json']} is malformed: image {img.get('id')} has no file_name")
        rel = str(img["coco_url"]).split("/")[-2:] if not img.get("file_name") else [img["file_name"]]
        path = paths["image_dir"].joinpath(*rel)
        if not path.is_file():
            path = images.find(Path(name).stem) or path
        if not path.is_file():
            raise FileNotFoundError(f"expected the image {path} listed in {paths['instances_json']}")
        entries.append({"image_path": path, "image_id": img["id"], "instance_image_id": img["id"]})
    return entries


def _add_semantic_paths(entries: list[dict], spec: DatasetSpec, paths: Mapping[str, Path]) -> None:
    """Set each entry's ``semantic_path``: the label file with the image's relative key (or base name)."""
    labels = _FileIndex(paths["semantic_dir"], spec.semantic_suffix)
    for e in entries:
        key = _image_key(e["image_path"], paths["image_dir"], spec.image_suffix)
        found = labels.find(key)
        if found is None:
            raise FileNotFoundError(
                f"expected the semantic label file {paths['semantic_dir'] / (key + spec.semantic_suffix)}"
            )
        e["semantic_path"] = found


def _add_instance_image_ids(entries: list[dict], paths: Mapping[str, Path], instance_gt: dict) -> None:
    """Set each entry's ``instance_image_id`` from the instance JSON, by image file name (or stem)."""
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
