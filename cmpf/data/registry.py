"""Benchmark dataset registry: where each evaluation set lives on disk and how it is evaluated.

Consumes a datasets root (``--data-root`` or the ``CMPF_DATASETS`` environment variable) and a
:class:`DatasetSpec`; produces checked absolute paths. Layouts follow the detectron2 / FrozenSeg
registrations (``frozenseg/data/datasets/register_*.py``, ``datasets/README.md``): the same
directory names under the root as ``DETECTRON2_DATASETS``. Test resolutions, enabled tasks and
object-mask thresholds follow the official evaluation configs (MODEL_SPEC §1.1, §8.5).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

Task = Literal["semantic", "instance", "panoptic"]
TASKS: tuple[Task, ...] = ("semantic", "instance", "panoptic")
DATASETS_ENV = "CMPF_DATASETS"

# Official inline vocabularies (no *_with_prompt_eng.txt file exists for BDD).
BDD_SEM_SEG_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
BDD_PANOPTIC_CLASSES = (
    "dynamic", "ego vehicle", "ground", "static", "parking", "rail track", "road", "sidewalk", "bridge",
    "building", "fence", "garage", "guard rail", "tunnel", "wall", "banner", "billboard", "lane divider",
    "parking sign", "pole", "polegroup", "street light", "traffic cone", "traffic device", "traffic light",
    "traffic sign", "traffic sign frame", "terrain", "vegetation", "sky", "person", "rider", "bicycle", "bus",
    "car", "caravan", "motorcycle", "trailer", "train", "truck",
)  # fmt: skip


@dataclass(frozen=True)
class DatasetSpec:
    """One evaluation (or training) set.

    Paths are relative to the datasets root. Panoptic sets are COCO-panoptic (JSON + PNG directory);
    semantic ground truth is a directory of label images (``semantic_suffix``, searched recursively,
    ``ignore_label`` = unlabeled); instance ground truth is a COCO/LVIS instances JSON, or, when
    ``instances_json`` is None, derived from the panoptic annotation (Cityscapes).

    Attributes:
        name: key in :data:`DATASETS`.
        official_name: the detectron2 dataset name FrozenSeg registers.
        image_dir: the RGB images (searched recursively for ``image_suffix``).
        tasks: the outputs evaluated (MODEL_SPEC §8.5).
        vocabulary: file name of the class list inside the user's vocabulary directory (the official
            ``*_with_prompt_eng.txt`` names); None when ``class_names`` holds the vocabulary inline.
        vocabulary_skip: leading vocabulary lines to drop (PAS-20 is PAS-21 without background).
        class_names: inline vocabulary (BDD), in contiguous order.
        min_size_test, max_size_test: ResizeShortestEdge at test time.
        object_mask_threshold: panoptic query score threshold.
    """

    name: str
    official_name: str
    image_dir: str
    tasks: tuple[Task, ...]
    vocabulary: Optional[str] = None
    vocabulary_skip: int = 0
    class_names: tuple[str, ...] = ()
    panoptic_dir: Optional[str] = None
    panoptic_json: Optional[str] = None
    semantic_dir: Optional[str] = None
    instances_json: Optional[str] = None
    image_suffix: str = ".jpg"
    semantic_suffix: str = ".png"
    ignore_label: int = 255
    min_size_test: int = 800
    max_size_test: int = 1333
    object_mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if (self.vocabulary is None) == (not self.class_names):
            raise ValueError(f"{self.name}: give exactly one of vocabulary / class_names")
        if not self.tasks or any(t not in TASKS for t in self.tasks):
            raise ValueError(f"{self.name}: tasks must be a non-empty subset of {TASKS}")
        if "panoptic" in self.tasks and not (self.panoptic_dir and self.panoptic_json):
            raise ValueError(f"{self.name}: panoptic evaluation needs panoptic_dir and panoptic_json")
        if "semantic" in self.tasks and not self.semantic_dir:
            raise ValueError(f"{self.name}: semantic evaluation needs semantic_dir")
        if "instance" in self.tasks and not (self.instances_json or self.panoptic_json):
            raise ValueError(f"{self.name}: instance evaluation needs instances_json or panoptic_json")


def _coco_panoptic(name: str, official: str, split: str, tasks: tuple[Task, ...]) -> DatasetSpec:
    return DatasetSpec(
        name, official, f"coco/{split}", tasks, vocabulary="coco_panoptic_with_prompt_eng.txt",
        panoptic_dir=f"coco/panoptic_{split}", panoptic_json=f"coco/annotations/panoptic_{split}.json",
        semantic_dir=f"coco/panoptic_semseg_{split}", instances_json=f"coco/annotations/instances_{split}.json",
    )  # fmt: skip


def _sem_seg(name: str, official: str, root: str, images: str, labels: str, vocab: str, **kw) -> DatasetSpec:
    return DatasetSpec(
        name, official, f"{root}/{images}", ("semantic",), vocabulary=vocab, semantic_dir=f"{root}/{labels}", **kw
    )


_ADE = "ADEChallengeData2016"
_ALL: tuple[Task, ...] = ("semantic", "instance", "panoptic")

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _coco_panoptic("coco-panoptic-train", "openvocab_coco_2017_train_panoptic_with_sem_seg", "train2017", _ALL),
        _coco_panoptic("coco-panoptic-val", "openvocab_coco_2017_val_panoptic_with_sem_seg", "val2017", _ALL),
        DatasetSpec(
            "ade20k-150", "openvocab_ade20k_panoptic_val", f"{_ADE}/images/validation", _ALL,
            vocabulary="ade20k_150_with_prompt_eng.txt", panoptic_dir=f"{_ADE}/ade20k_panoptic_val",
            panoptic_json=f"{_ADE}/ade20k_panoptic_val.json", semantic_dir=f"{_ADE}/annotations_detectron2/validation",
            instances_json=f"{_ADE}/ade20k_instance_val.json",
        ),
        _sem_seg(
            "ade20k-847", "openvocab_ade20k_full_sem_seg_val", "ADE20K_2021_17_01", "images_detectron2/validation",
            "annotations_detectron2/validation", "ade20k_847_with_prompt_eng.txt",
            semantic_suffix=".tif", ignore_label=65535,
        ),
        _sem_seg(
            "pascal-context-59", "openvocab_pascal_ctx59_sem_seg_val", "pascal_ctx_d2", "images/validation",
            "annotations_ctx59/validation", "pascal_ctx_59_with_prompt_eng.txt",
        ),
        _sem_seg(
            "pascal-context-459", "openvocab_pascal_ctx459_sem_seg_val", "pascal_ctx_d2", "images/validation",
            "annotations_ctx459/validation", "pascal_ctx_459_with_prompt_eng.txt",
            semantic_suffix=".tif", ignore_label=65535,
        ),
        _sem_seg(
            "pascal-voc-20", "openvocab_pascal20_sem_seg_val", "pascal_voc_d2", "images/validation",
            "annotations_pascal20/validation", "pascal_voc_21_with_prompt_eng.txt", vocabulary_skip=1,
        ),
        _sem_seg(
            "pascal-voc-21", "openvocab_pascal21_sem_seg_val", "pascal_voc_d2", "images/validation",
            "annotations_pascal21/validation", "pascal_voc_21_with_prompt_eng.txt",
        ),
        DatasetSpec(
            "cityscapes", "openvocab_cityscapes_fine_panoptic_val", "cityscapes/leftImg8bit/val", _ALL,
            vocabulary="cityscapes_with_prompt_eng.txt", panoptic_dir="cityscapes/gtFine/cityscapes_panoptic_val",
            panoptic_json="cityscapes/gtFine/cityscapes_panoptic_val.json", semantic_dir="cityscapes/gtFine/val",
            image_suffix="_leftImg8bit.png", semantic_suffix="_gtFine_labelTrainIds.png",
            min_size_test=1024, max_size_test=2560,
        ),
        DatasetSpec(
            "mapillary-vistas", "openvocab_mapillary_vistas_panoptic_val", "mapillary_vistas/validation/images",
            ("semantic", "panoptic"), vocabulary="mapillary_vistas_with_prompt_eng.txt",
            panoptic_dir="mapillary_vistas/validation/panoptic",
            panoptic_json="mapillary_vistas/validation/panoptic/panoptic_2018.json",
            semantic_dir="mapillary_vistas/validation/labels", ignore_label=65,
            min_size_test=1024, max_size_test=2560,
        ),
        DatasetSpec(
            "bdd-panoptic", "bdd10k_40_panoptic_val", "bdd100k/images/10k/val", ("panoptic",),
            class_names=BDD_PANOPTIC_CLASSES, panoptic_dir="bdd100k/jsons/pan_seg/masks/val",
            panoptic_json="bdd100k/jsons/pan_seg_val_cocofmt.json", object_mask_threshold=0.4,
        ),
        DatasetSpec(
            "bdd-semantic", "bdd10k_val_sem_seg", "bdd100k/images/10k/val", ("semantic",),
            class_names=BDD_SEM_SEG_CLASSES, semantic_dir="bdd100k/labels/sem_seg/masks/val",
        ),
        DatasetSpec(
            "lvis", "openvocab_lvis_v1_val", "coco", ("instance",), vocabulary="lvis_1203_with_prompt_eng.txt",
            instances_json="lvis/lvis_v1_val.json",
        ),
    )
}  # fmt: skip


def dataset_root(root: Union[str, os.PathLike, None] = None) -> Path:
    """The datasets root: ``root`` if given, else ``$CMPF_DATASETS``.

    Raises:
        ValueError: neither is set.
    """
    value = root if root is not None else os.environ.get(DATASETS_ENV)
    if not value:
        raise ValueError(f"no datasets root: pass --data-root or set {DATASETS_ENV}")
    return Path(value)


def _required(spec: DatasetSpec, tasks: tuple[Task, ...]) -> dict[str, str]:
    """Field name → relative path of what evaluating ``tasks`` reads."""
    fields = {"image_dir": spec.image_dir}
    if "panoptic" in tasks or ("instance" in tasks and spec.instances_json is None):
        fields.update(panoptic_dir=spec.panoptic_dir, panoptic_json=spec.panoptic_json)
    if "semantic" in tasks:
        fields["semantic_dir"] = spec.semantic_dir
    if "instance" in tasks and spec.instances_json is not None:
        fields["instances_json"] = spec.instances_json
    return {k: v for k, v in fields.items() if v is not None}


def _load_json(path: Path, keys: tuple[str, ...]) -> dict:
    try:
        with open(path) as f:
            info = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    missing = [k for k in keys if not isinstance(info, dict) or not isinstance(info.get(k), list)]
    if missing:
        raise ValueError(f"{path} is malformed: expected list field(s) {missing}")
    return info


def _check_dir(path: Path, suffix: str, what: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"expected the {what} directory {path}")
    if next((p for p in path.rglob(f"*{suffix}") if p.is_file()), None) is None:
        raise ValueError(f"the {what} directory {path} has no '*{suffix}' file")


def check_dataset(
    spec: DatasetSpec,
    root: Union[str, os.PathLike, None] = None,
    tasks: Optional[tuple[Task, ...]] = None,
    vocabulary_dir: Union[str, os.PathLike, None] = None,
) -> dict[str, Path]:
    """Check that a dataset is laid out as ``spec`` says and return its absolute paths.

    Args:
        spec: the dataset.
        root: datasets root (default ``$CMPF_DATASETS``).
        tasks: only check what these tasks read (default: all of ``spec.tasks``).
        vocabulary_dir: when given, also check that the vocabulary file is in it.
    Returns:
        Field name (``image_dir``, ``panoptic_json``, ..., ``vocabulary``) → absolute path.
    Raises:
        FileNotFoundError: a file or directory is missing; the message names it.
        ValueError: something is malformed (bad JSON, an empty directory) or a task is not offered.
    """
    base = dataset_root(root)
    tasks = spec.tasks if tasks is None else tasks
    unknown = [t for t in tasks if t not in spec.tasks]
    if unknown:
        raise ValueError(f"{spec.name} does not evaluate {unknown}; it offers {spec.tasks}")
    paths = {k: base / v for k, v in _required(spec, tasks).items()}
    for key, path in paths.items():
        if key.endswith("_json") and not path.is_file():
            raise FileNotFoundError(f"expected the {key.replace('_', ' ')} file {path}")
    _check_dir(paths["image_dir"], spec.image_suffix, "image")
    if "semantic_dir" in paths:
        _check_dir(paths["semantic_dir"], spec.semantic_suffix, "semantic label")
    if "instances_json" in paths:
        _load_json(paths["instances_json"], ("images", "annotations", "categories"))
    if "panoptic_json" in paths:
        info = _load_json(paths["panoptic_json"], ("annotations", "categories"))
        if not paths["panoptic_dir"].is_dir():
            raise FileNotFoundError(f"expected the panoptic PNG directory {paths['panoptic_dir']}")
        if info["annotations"]:
            name = info["annotations"][0].get("file_name") if isinstance(info["annotations"][0], dict) else None
            if not name:
                raise ValueError(f"{paths['panoptic_json']} is malformed: its first annotation has no file_name")
            first = paths["panoptic_dir"] / name
            if not first.is_file():
                raise FileNotFoundError(f"expected the panoptic PNG {first} listed in {paths['panoptic_json']}")
    if vocabulary_dir is not None and spec.vocabulary is not None:
        paths["vocabulary"] = Path(vocabulary_dir) / spec.vocabulary
        if not paths["vocabulary"].is_file():
            raise FileNotFoundError(f"expected the vocabulary file {paths['vocabulary']}")
    return {k: v.resolve() for k, v in paths.items()}
