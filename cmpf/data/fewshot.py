"""PASCAL-5i and COCO-20i as Fusioner evaluates them: HSNet's split files and folds, the official episode order.

Consumes the datasets in their usual layouts plus the split files of HSNet (``data/splits`` of
juhongm999/hsnet; Fusioner's ``dataset/splits`` holds the same val files); produces ``Episode``s
(image, mask file, one label id, its class name) and, per episode, the image, the binary ground truth
``mask == label`` and the ignore area ``mask == 255`` (``FU:dataset/custom_dataset.py``).

Layouts (``FU:dataset/pascal.py``, ``FU:dataset/coco.py``; FUSIONER_SPEC §7):
- PASCAL: ``ROOT/VOCdevkit/VOC2012/JPEGImages/<name>.jpg``, masks ``ROOT/SegmentationClassAug/<name>.png``
  (label ids 1..20, 255 ignore); lists ``SPLITS/pascal/{val,trn}/fold<i>.txt`` of ``<name>__<label>``,
  read as the official ``f.read().split('\\n')[:-1]`` (a list without a final newline loses its last line).
  Evaluation = every pair of the fold's val list, in file order (``len = min(len, 1000)``).
- COCO: ``SPLITS/coco/{val,trn}/fold<i>.pkl``: {0-based class: ['val2014/COCO_val2014_….jpg', ...]};
  images ``ROOT/val2014/<name>``, masks ``ROOT/annotation/val2014/<name>.png`` (label id = class + 1),
  i.e. the doubled ``val2014/val2014`` folder of the official code. Evaluation = the first 1000 of
  ``sorted(set((name, class)))`` (not HSNet's 1000 random episodes).
- Folds: PASCAL fold i's novel labels are 5i+1..5i+5; COCO fold i's are {i + 4v + 1 : v = 0..19}.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from cmpf.errors import InputError

FewShotDataset = Literal["pascal-5i", "coco-20i"]
FOLDS = 4
COCO_EPISODES = 1000  # ``DatasetCOCO.__len__``
PASCAL_MAX_EPISODES = 1000  # ``DatasetPASCAL.__len__``: min(len(list), 1000)
IGNORE = 255

# label id = index; HSNet's space-free spellings are the prompt strings (``FU:dataset/pascal.py:30-31``)
PASCAL_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# ``FU:dataset/splits/coco/labels.txt``: line 0 = __bg__, label id = line index
COCO_CLASSES = (
    "__bg__", "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat", "trafficlight",
    "firehydrant", "stopsign", "parkingmeter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sportsball", "kite", "baseballbat", "baseballglove", "skateboard", "surfboard", "tennisracket", "bottle",
    "wineglass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hotdog", "pizza", "donut", "cake", "chair", "sofa", "pottedplant", "bed", "diningtable", "toilet",
    "tvmonitor", "laptop", "mouse", "remote", "keyboard", "cellphone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddybear", "hairdrier", "toothbrush",
)


def class_names(dataset: FewShotDataset) -> tuple[str, ...]:
    """Names by label id (index 0 = background) of ``dataset``."""
    return PASCAL_CLASSES if _check(dataset, 0) == "pascal-5i" else COCO_CLASSES


def novel_labels(dataset: FewShotDataset, fold: int) -> tuple[int, ...]:
    """Label ids of the fold's novel (evaluated) classes (``build_class_ids``, + 1)."""
    if _check(dataset, fold) == "pascal-5i":
        return tuple(5 * fold + i + 1 for i in range(5))
    return tuple(fold + 4 * v + 1 for v in range(20))


def base_labels(dataset: FewShotDataset, fold: int) -> tuple[int, ...]:
    """Label ids of the fold's base (training) classes."""
    novel = set(novel_labels(dataset, fold))
    return tuple(i for i in range(1, len(class_names(dataset))) if i not in novel)


@dataclass(frozen=True)
class Episode:
    """One evaluation (or training) sample: one image and one class of it."""

    image: Path
    mask: Path
    label: int  # label id in the mask
    class_name: str


def read_pascal_list(path: str | Path) -> list[tuple[str, int]]:
    """``<name>__<label>`` lines → (name, label id), as ``FU:dataset/pascal.py::read_metadata`` reads them."""
    path = Path(path)
    try:
        lines = path.read_text().split("\n")[:-1]  # the official quirk: the text after the last newline is dropped
    except OSError as e:
        raise InputError(f"{path}: cannot read the split file ({e.strerror}); give --splits HSNet's data/splits "
                         f"folder (with pascal/val/fold0.txt)") from None
    pairs = []
    for i, line in enumerate(lines, 1):
        name, sep, label = line.partition("__")
        if not sep or not label.isdigit():
            raise InputError(f"{path}:{i}: expected '<image>__<class id>', got {line!r}")
        pairs.append((name, int(label)))
    return pairs


class _PlainUnpickler(pickle.Unpickler):
    """Dicts, lists, strings and numbers only: a split file never runs code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"the split file refers to {module}.{name}; only plain data is read")


def read_coco_pickle(path: str | Path) -> dict[int, list[str]]:
    """HSNet's ``fold<i>.pkl``: {0-based class: [image names]}, read without executing anything."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _PlainUnpickler(f).load()
    except OSError as e:
        raise InputError(f"{path}: cannot read the split file ({e.strerror}); give --splits HSNet's data/splits "
                         f"folder (with coco/val/fold0.pkl)") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise InputError(f"{path}: not an HSNet split file ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(k, int) and isinstance(v, list) for k, v in data.items()):
        raise InputError(f"{path}: expected a dict of class id -> list of image names")
    return data


def episodes(dataset: FewShotDataset, root: str | Path, splits: str | Path, fold: int,
             split: Literal["val", "trn"] = "val") -> list[Episode]:
    """The episodes of ``dataset`` / ``fold`` in the official order (val: the evaluated ones, each once).

    ``trn`` gives the training pairs: for PASCAL the lists of the other three folds, concatenated
    (``build_img_metadata``); for COCO the fold's own ``trn`` pickle (its 60 base classes), sorted.
    """
    dataset = _check(dataset, fold)
    root, splits = Path(root), Path(splits)
    names = class_names(dataset)
    if dataset == "pascal-5i":
        folds = [fold] if split == "val" else [f for f in range(FOLDS) if f != fold]
        pairs = [p for f in folds for p in read_pascal_list(splits / "pascal" / split / f"fold{f}.txt")]
        if split == "val":
            pairs = pairs[:PASCAL_MAX_EPISODES]
        images, masks = root / "VOCdevkit" / "VOC2012" / "JPEGImages", root / "SegmentationClassAug"
        return [Episode(images / f"{n}.jpg", masks / f"{n}.png", label, names[_label(label, names, n)])
                for n, label in pairs]
    table = read_coco_pickle(splits / "coco" / split / f"fold{fold}.pkl")
    pairs = sorted({(n, k) for k, files in table.items() for n in files})
    if split == "val":
        pairs = pairs[:COCO_EPISODES]
    folder = "val2014" if split == "val" else "train2014"
    return [Episode(root / folder / n, root / "annotation" / folder / n.replace(".jpg", ".png"), k + 1,
                    names[_label(k + 1, names, n)]) for n, k in pairs]


def load_episode(episode: Episode) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB image, (H, W) bool ground truth ``mask == label``, (H, W) bool ignore ``mask == 255``."""
    try:
        with Image.open(episode.image) as im:
            image = np.asarray(im.convert("RGB"))
        with Image.open(episode.mask) as im:
            mask = np.asarray(im)
    except OSError as e:
        raise InputError(f"{e.filename or episode.image}: cannot read ({e.strerror or e}); check --data-root "
                         f"(the layout is in cmpf.data.fewshot's docstring)") from None
    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise InputError(f"{episode.mask}: mask {mask.shape} does not match its image {image.shape[:2]}")
    return image, mask == episode.label, mask == IGNORE


def _label(label: int, names: tuple[str, ...], image: str) -> int:
    if not 1 <= label < len(names):
        raise InputError(f"{image}: class id {label} is outside 1..{len(names) - 1}")
    return label


def _check(dataset: str, fold: int) -> str:
    if dataset not in ("pascal-5i", "coco-20i"):
        raise InputError(f"unknown few-shot dataset {dataset!r}; choose pascal-5i or coco-20i")
    if fold not in range(FOLDS):
        raise InputError(f"fold {fold} does not exist; folds are 0..{FOLDS - 1}")
    return dataset
