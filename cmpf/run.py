"""``cmpf run``: images + vocabulary + (checkpoint | exported artifacts) → result files.

Everything is validated before any output is written (images readable, vocabulary valid, weights
loadable), so a bad input never leaves half the results on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from cmpf.backend import Backend
from cmpf.errors import InputError
from cmpf.io import Staging
from cmpf.outputs import check_outputs, dump_tensors, write_segmentation
from cmpf.predictor import ModelSource, Predictor, load_predictor, options_with
from cmpf.preprocess import DEFAULT_MAX_PIXELS, load_image
from cmpf.vocabulary import load_vocabulary, load_vocabulary_file


@dataclass(frozen=True)
class RunConfig:
    images: tuple[str, ...]
    out_dir: str
    source: ModelSource
    backend: Optional[Backend] = None  # default: onnxruntime for artifacts, torch for a preset
    vocab: Optional[str] = None  # default (with --artifacts): the vocabulary recorded at export
    classes: Optional[str] = None
    things: Optional[str] = None
    train_vocab: Optional[str] = None  # default (with --artifacts): the export's seen classes
    resize: Optional[bool] = None  # None: the model's default (the official resize)
    sam_ensemble: bool = False  # the OpenSeg SAM-mask ensemble of the semantic output
    sam_masks: Optional[str] = None  # precomputed masks: a .pkl/.npz file (one image) or a folder of <stem>.pkl|npz
    dump_tensors: Optional[str] = None
    device: str = "cpu"
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused (decompression bombs)


def run(cfg: RunConfig) -> list[Path]:
    """Segment every image and write the result files; returns the paths written."""
    check_outputs(cfg.out_dir, cfg.images, cfg.dump_tensors)  # fail early on an unusable --out
    images = [load_image(p, max_pixels=cfg.max_pixels) for p in cfg.images]  # and on any bad image
    sam_masks = load_sam_masks(cfg.sam_masks, cfg.images, images) if cfg.sam_masks else None
    vocabulary = load_vocabulary(cfg.vocab, cfg.classes, cfg.things, required=False)
    predictor = load_predictor(cfg.source, cfg.backend, cfg.device)
    _report_weights(predictor, cfg.source)
    vocabulary = predictor.resolve_vocabulary(vocabulary)
    options = options_with(predictor.options, resize=cfg.resize, sam_ensemble=cfg.sam_ensemble or None)
    if cfg.train_vocab:
        options = options.with_seen(load_vocabulary_file(cfg.train_vocab).classes)
    with Staging() as stage:  # all or nothing: files move into --out only once every image is done
        out_dir = stage.directory(cfg.out_dir, "--out")
        dump = stage.file(cfg.dump_tensors, "--dump-tensors") if cfg.dump_tensors else None
        for i, (path, image) in enumerate(tqdm(list(zip(cfg.images, images)), desc="segment", unit="img")):
            result = predictor.segment([image], vocabulary, options, sam_masks=sam_masks and [sam_masks[i]])
            seg = result.segmentations[0]
            write_segmentation(seg, image, out_dir, Path(path).stem, image_id=Path(path).stem)
            if dump and i == 0:
                dump_tensors(dump, result.tensors, seg, result.sam_masks[:1])
    return stage.committed


def load_sam_masks(where: str, paths: tuple[str, ...], images: list) -> list:
    """Precomputed SAM masks of every image (``cmpf.sam_masks.load_masks``), all checked before any run.

    ``where`` is one ``.pkl``/``.npz`` file for a single image, or a folder holding ``<stem>.pkl`` or
    ``<stem>.npz`` per image (the official ``save_sam_masks.py`` layout: ``<image_id>.pkl``).
    """
    from cmpf.sam_masks import load_masks

    folder = Path(where)
    if not folder.is_dir():
        if len(paths) != 1:
            raise InputError(f"--sam-masks {where} is one file for {len(paths)} images; give a folder of "
                             f"<image stem>.pkl|.npz files")
        return [load_masks(folder, tuple(images[0].shape[-2:]))]
    masks = []
    for path, image in zip(paths, images):
        found = [f for f in (folder / f"{Path(path).stem}.pkl", folder / f"{Path(path).stem}.npz") if f.is_file()]
        if not found:
            raise InputError(f"--sam-masks {where}: no {Path(path).stem}.pkl or {Path(path).stem}.npz for {path}")
        masks.append(load_masks(found[0], tuple(image.shape[-2:])))
    return masks


def _report_weights(predictor: Predictor, source: ModelSource) -> None:
    if source.artifacts:
        return
    if predictor.load_report is not None:
        print("weights:\n" + predictor.load_report.summary())
    else:
        print(f"warning: no --checkpoint: {source.model} runs with random weights")
