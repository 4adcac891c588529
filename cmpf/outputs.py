"""Writing results: semantic PNG + colour overlay, COCO panoptic PNG + JSON, COCO instance results.

Every file is written atomically (a temp file in the same directory, then ``os.replace``), so an
interrupted run never leaves a half-written file behind; ``cmpf run`` writes them through a
``cmpf.io.Staging`` so that a failed run leaves no result at all. ``check_outputs`` refuses an
unusable ``--out`` before anything is computed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from cmpf.codecs import encode_rle, id2rgb
from cmpf.errors import InputError
from cmpf.io import atomic_write, check_output_dir, check_output_file, write_json
from cmpf.postprocess import Segmentation


RESULT_SUFFIXES = ("_semantic.png", "_overlay.png", "_panoptic.png", "_panoptic.json", "_instances.json")


def check_outputs(out_dir: str | Path, images: Sequence[str], dump: Optional[str] = None) -> None:
    """Refuse, before any work, an ``--out`` / ``--dump-tensors`` that cannot take the results."""
    out_dir = check_output_dir(out_dir, "--out")
    stems = Counter(Path(p).stem for p in images)
    twice = sorted(s for s, n in stems.items() if n > 1)
    if twice:
        raise InputError(f"images {', '.join(twice)} appear twice by name (their results would overwrite each "
                         f"other in --out {out_dir}); run them separately or rename them")
    for stem in stems:
        for suffix in RESULT_SUFFIXES:
            if (out_dir / f"{stem}{suffix}").is_dir():
                raise InputError(f"--out {out_dir}: {stem}{suffix} is a directory, in the way of a result file; "
                                 f"remove it or choose another --out")
    if dump is not None:
        check_output_file(dump, "--dump-tensors")


def _write_png(path: Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def palette(n: int) -> np.ndarray:
    """Deterministic distinct colours (n, 3) uint8."""
    rng = np.random.default_rng(12345)
    return rng.integers(40, 256, size=(max(n, 1), 3), dtype=np.uint8)


def write_segmentation(seg: Segmentation, image: torch.Tensor, out_dir: str | Path, stem: str,
                       image_id: int | str = 0) -> dict[str, Path]:
    """Write all result files of one image; ``image`` is the uint8 (3, H, W) input for the overlay."""
    out_dir = Path(out_dir)
    labels = seg.semantic_labels.cpu().numpy()
    dtype = np.uint8 if len(seg.class_names) <= 256 else np.uint16
    colours = palette(len(seg.class_names))
    rgb = image.permute(1, 2, 0).cpu().numpy().astype(np.float32)
    overlay = (0.5 * rgb + 0.5 * colours[labels]).astype(np.uint8)
    panoptic = seg.panoptic.cpu().numpy().astype(np.int64)
    files = {
        "semantic": _write_png(out_dir / f"{stem}_semantic.png", labels.astype(dtype)),
        "overlay": _write_png(out_dir / f"{stem}_overlay.png", overlay),
        "panoptic_png": _write_png(out_dir / f"{stem}_panoptic.png", id2rgb(panoptic)),
    }
    segments = [{"id": s["id"], "category_id": s["category_id"], "iscrowd": 0, "isthing": s["isthing"],
                 "area": s["area"], "category_name": seg.class_names[s["category_id"]]} for s in seg.segments]
    files["panoptic_json"] = write_json(out_dir / f"{stem}_panoptic.json", {
        "image_id": image_id, "file_name": f"{stem}_panoptic.png", "segments_info": segments})
    masks = seg.instance_masks.cpu().numpy()
    instances = [{"image_id": image_id, "category_id": int(c), "score": float(s), "segmentation": encode_rle(m),
                  "category_name": seg.class_names[int(c)]}
                 for s, c, m in zip(seg.instance_scores.tolist(), seg.instance_classes.tolist(), masks)]
    files["instances"] = write_json(out_dir / f"{stem}_instances.json", instances)
    return files


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
