"""Result files that other tools read: label and colour PNGs, overlays, COCO panoptic and COCO results.

Layout of one run's ``--out`` (``<stem>`` is the input file's name without its suffix):

    semantic/<stem>.png   palette PNG: pixel = class index in vocabulary order (0 … K-1), palette = the
                          class colours (a 16-bit grey PNG above 256 classes); `cmpf metrics semantic`
                          reads the folder (file stems as the ground truth's)
    color/<stem>.png      RGB: the same map in the class colours
    overlay/<stem>.png    the image with every panoptic segment tinted, outlined and named, and a legend
    panoptic/<stem>.png   COCO panoptic PNG (segment id = R + 256 G + 256² B, 0 = void)
    panoptic.json         COCO panoptic predictions: images, annotations (segments_info: id, category_id,
                          iscrowd, isthing, area, bbox), categories (id, name, isthing, color)
    instances.json        COCO results: image_id, category_id, segmentation (RLE), bbox, area, score

Category ids (and colours) are the run's ``Categories`` (the vocabulary file's ``id:``, a dataset's,
else 1 … K and ``cmpf.visualize.palette``); image ids are the caller's (a dataset's numeric ids
where one is given). Every file is written atomically (``cmpf.io``); ``cmpf run`` writes them
through a ``Staging`` so that a failed run leaves no result at all. ``check_outputs`` refuses an
unusable ``--out`` before anything is computed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from cmpf.codecs import encode_rles, id2rgb, mask_bbox
from cmpf.errors import InputError
from cmpf.io import atomic_write, check_output_dir, check_output_file, write_json
from cmpf.postprocess import Segmentation
from cmpf.visualize import color_map, overlay, palette
from cmpf.vocabulary import Vocabulary

FOLDERS = ("semantic", "color", "overlay", "panoptic")  # one <stem>.png per image in each
RUN_FILES = ("panoptic.json", "instances.json")


@dataclass(frozen=True)
class Categories:
    """Per class index (vocabulary order): the category id written to the files, its name, thing flag."""

    ids: tuple[int, ...]
    names: tuple[str, ...]
    is_thing: tuple[bool, ...]
    colors: Optional[tuple[tuple[int, int, int], ...]] = None  # a dataset's (panopticapi's "color"), else palette()

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.names) == len(self.is_thing):
            raise InputError(f"{len(self.ids)} category ids for {len(self.names)} classes; give one id per class")
        if self.colors is not None and len(self.colors) != len(self.ids):
            raise InputError(f"{len(self.colors)} category colours for {len(self.ids)} classes; give one per class")
        twice = sorted(i for i, n in Counter(self.ids).items() if n > 1)
        if twice:
            raise InputError(f"category id {twice[0]} belongs to two classes; give every class its own id")

    @staticmethod
    def of(vocabulary: Vocabulary, ids: Optional[Sequence[int]] = None,
           colors: Optional[Sequence[Sequence[int]]] = None) -> "Categories":
        """The vocabulary's classes with ``ids`` (default 1 … K, COCO's convention) and ``colors``."""
        ids = tuple(int(i) for i in ids) if ids is not None else tuple(range(1, len(vocabulary) + 1))
        colors = tuple(tuple(int(v) for v in c) for c in colors) if colors is not None else None
        return Categories(ids, tuple(vocabulary.names), tuple(vocabulary.is_thing), colors)  # type: ignore[arg-type]

    def palette(self) -> np.ndarray:
        """(K, 3) uint8: the class colours of every picture and palette PNG."""
        return np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3) if self.colors else palette(len(self.ids))

    def to_coco(self) -> list[dict]:
        return [{"id": i, "name": n, "isthing": int(t), "color": c}
                for i, n, t, c in zip(self.ids, self.names, self.is_thing, self.palette().tolist())]


def check_outputs(out_dir: str | Path, images: Sequence[str], dump: Optional[str] = None) -> None:
    """Refuse, before any work, an ``--out`` / ``--dump-tensors`` that cannot take the results."""
    out_dir = check_output_dir(out_dir, "--out")
    stems = Counter(Path(p).stem for p in images)
    twice = sorted(s for s, n in stems.items() if n > 1)
    if twice:
        raise InputError(f"images {', '.join(twice)} appear twice by name (their results would overwrite each "
                         f"other in --out {out_dir}); run them separately or rename them")
    for folder in FOLDERS:
        if (out_dir / folder).exists() and not (out_dir / folder).is_dir():
            raise InputError(f"--out {out_dir}: {folder} is a file, in the way of the {folder}/ results; remove "
                             f"it or choose another --out")
        for stem in stems:
            if (out_dir / folder / f"{stem}.png").is_dir():
                raise InputError(f"--out {out_dir}: {folder}/{stem}.png is a directory, in the way of a result "
                                 f"file; remove it or choose another --out")
    for name in RUN_FILES:
        if (out_dir / name).is_dir():
            raise InputError(f"--out {out_dir}: {name} is a directory, in the way of a result file; remove it "
                             f"or choose another --out")
    if dump is not None:
        check_output_file(dump, "--dump-tensors")


def stem_image_ids(paths: Sequence[Path]) -> dict[Path, int | str]:
    """Image ids without a dataset: the file stems, as numbers when every stem is one (COCO's names)."""
    numeric = all(p.stem.isdigit() for p in paths)
    return {p: int(p.stem) if numeric else p.stem for p in paths}


def _write_png(path: Path, image: Image.Image | np.ndarray) -> Path:
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def label_png(labels: np.ndarray, colours: np.ndarray) -> Image.Image:
    """(H, W) class indices → palette PNG image (indices as pixels), or 16-bit grey above 256 classes."""
    if len(colours) > 256:
        return Image.fromarray(labels.astype(np.uint16))
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(colours.reshape(-1).tolist())  # an "L" image becomes "P" with these colours
    return image


def segment_masks(seg: Segmentation) -> tuple[torch.Tensor, list[int]]:
    """The panoptic segments as (N, H, W) bool masks and their class indices."""
    ids = [s["id"] for s in seg.segments]
    panoptic = seg.panoptic.cpu()
    masks = panoptic[None] == torch.tensor(ids, dtype=panoptic.dtype).view(-1, 1, 1)
    return masks, [s["category_id"] for s in seg.segments]


class ResultWriter:
    """Writes one run's files under ``out_dir``: each image's PNGs in ``add``, the COCO JSONs in ``finish``."""

    def __init__(self, out_dir: str | Path, categories: Categories):
        self.out_dir, self.categories = Path(out_dir), categories
        self.colours = categories.palette()
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.results: list[dict] = []
        self.files: list[Path] = []

    def add(self, seg: Segmentation, image: torch.Tensor, stem: str, image_id: int | str,
            file_name: Optional[str] = None) -> dict[str, Path]:
        """Write the PNGs of one image (``image``: the uint8 (3, H, W) input) and keep its JSON records."""
        labels = seg.semantic_labels.cpu().numpy()
        masks, classes = segment_masks(seg)
        picture = overlay(image, masks, classes, list(self.categories.names), self.colours)
        files = {
            "semantic": _write_png(self.out_dir / "semantic" / f"{stem}.png", label_png(labels, self.colours)),
            "color": _write_png(self.out_dir / "color" / f"{stem}.png", color_map(labels, self.colours)),
            "overlay": _write_png(self.out_dir / "overlay" / f"{stem}.png", picture),
            "panoptic": _write_png(self.out_dir / "panoptic" / f"{stem}.png",
                                   id2rgb(seg.panoptic.cpu().numpy().astype(np.int64))),
        }
        h, w = labels.shape
        self.images.append({"id": image_id, "file_name": file_name or f"{stem}.png", "height": h, "width": w})
        self.annotations.append({"image_id": image_id, "file_name": f"{stem}.png",
                                 "segments_info": self._segments(seg, masks.numpy())})
        self.results += self._instances(seg, image_id)
        self.files += files.values()
        return files

    def _segments(self, seg: Segmentation, masks: np.ndarray) -> list[dict]:
        cats = self.categories
        return [{"id": s["id"], "category_id": cats.ids[s["category_id"]], "iscrowd": 0, "isthing": int(s["isthing"]),
                 "area": s["area"], "bbox": mask_bbox(m), "category_name": cats.names[s["category_id"]]}
                for s, m in zip(seg.segments, masks)]

    def _instances(self, seg: Segmentation, image_id: int | str) -> list[dict]:
        cats = self.categories
        masks = seg.instance_masks.cpu().numpy()
        return [{"image_id": image_id, "category_id": cats.ids[c], "segmentation": rle, "bbox": mask_bbox(m),
                 "area": int(m.sum()), "score": round(float(s), 6), "category_name": cats.names[c]}
                for s, c, m, rle in zip(seg.instance_scores.tolist(), seg.instance_classes.tolist(), masks,
                                        encode_rles(masks))]

    def finish(self) -> list[Path]:
        """Write ``panoptic.json`` and ``instances.json``; returns every file this writer wrote."""
        coco = {"images": self.images, "annotations": self.annotations, "categories": self.categories.to_coco()}
        self.files.append(write_json(self.out_dir / "panoptic.json", coco))
        self.files.append(write_json(self.out_dir / "instances.json", self.results))
        return self.files


def dump_tensors(path: str | Path, tensors: dict[str, torch.Tensor], seg: Segmentation, sam_masks=()) -> Path:
    """The parity dump of the first image: float32 arrays named as in the issue / golden README.

    With the SAM ensemble (``sam_masks``: that image's ``SamMasks``), also the masks (N, H0, W0) bool,
    their predicted IoU, stability score and XYWH boxes; ``sem_seg`` is then the ensembled map.
    """
    arrays = {k: v[:1].detach().float().cpu().numpy() for k, v in tensors.items()
              if k in ("pred_logits", "pred_masks", "out_vocab_logits")}
    arrays["mask_cls_logprob"] = tensors["mask_cls_logprob"][0].detach().float().cpu().numpy()
    if "sam_embedding" in tensors:
        arrays["sam_embedding"] = tensors["sam_embedding"][:1].detach().float().cpu().numpy()
    arrays["sem_seg"] = seg.semantic.float().cpu().numpy()
    arrays["panoptic_seg"] = seg.panoptic.cpu().numpy().astype(np.int32)
    arrays["instance_scores"] = seg.instance_scores.float().cpu().numpy()
    arrays["instance_classes"] = seg.instance_classes.cpu().numpy()
    arrays["instance_masks"] = seg.instance_masks.cpu().numpy().astype(bool)
    for sam in sam_masks[:1]:
        arrays["sam_masks"] = sam.masks.cpu().numpy().astype(bool)
        arrays["sam_predicted_iou"] = sam.predicted_iou.float().cpu().numpy()
        arrays["sam_stability_score"] = sam.stability_score.float().cpu().numpy()
        arrays["sam_boxes_xywh"] = sam.boxes.float().cpu().numpy()

    def savez(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    return atomic_write(path, savez)
