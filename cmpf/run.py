"""``cmpf run``: images (files, folders, globs) + vocabulary + (checkpoint | exported artifacts) → result files.

The inputs expand in order: a folder to the files in it (sorted by name, not recursive, hidden
files left out), a glob pattern to its matches (sorted; ``**`` recurses), a file to itself. A file
named on the command line must be a usable image: a bad one ends the run and nothing is written.
A file found in a folder or by a pattern that is not a usable image is skipped, reported and
counted (``RunResult.skipped``; the command then exits 2 after writing the other results). The
vocabulary, the output folder and the weights are checked before the first image is segmented;
images are read and segmented ``batch`` at a time, and every file goes through one ``Staging``
(all or nothing). The files are those of ``cmpf.outputs``.
"""

from __future__ import annotations

import glob
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from cmpf.backend import Backend
from cmpf.errors import InputError
from cmpf.io import Staging
from cmpf.outputs import FOLDERS, RUN_FILES, Categories, ResultWriter, check_outputs, dump_tensors, stem_image_ids
from cmpf.predictor import ModelSource, Predictor, load_predictor, options_with
from cmpf.preprocess import DEFAULT_MAX_PIXELS, ImageError, load_image
from cmpf.vocabulary import Vocabulary, load_vocabulary, load_vocabulary_file, vocabulary_ids

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class RunConfig:
    inputs: tuple[str, ...]  # image files, folders of images, glob patterns
    out_dir: str
    source: ModelSource
    backend: Optional[Backend] = None  # default: onnxruntime for artifacts, torch for a preset
    vocab: Optional[str] = None  # default (with --artifacts): the vocabulary recorded at export
    classes: Optional[str] = None
    things: Optional[str] = None
    train_vocab: Optional[str] = None  # default (with --artifacts): the export's seen classes
    coco_json: Optional[str] = None  # a COCO annotation file of these images: image ids (and categories)
    resize: Optional[bool] = None  # None: the model's default (the official resize)
    sam_ensemble: bool = False  # the OpenSeg SAM-mask ensemble of the semantic output
    sam_masks: Optional[str] = None  # precomputed masks: a .pkl/.npz file (one image) or a folder of <stem>.pkl|npz
    dump_tensors: Optional[str] = None
    device: str = "cpu"
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused (decompression bombs)
    batch: int = 1  # images per pipeline call
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise InputError(f"--batch {self.batch}: give a positive number of images per call")


@dataclass(frozen=True)
class Input:
    path: Path
    named: bool  # named on the command line (must be an image) or found in a folder / by a pattern


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    files: list[Path]
    images: int  # images segmented
    seconds: float  # reading, segmenting and writing them (the model load excluded)
    skipped: tuple[tuple[str, str], ...] = field(default=())  # (file, why) of files that are not images

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(self.images, 1)

    def summary(self) -> str:
        where = ", ".join([f"{f}/" for f in FOLDERS] + list(RUN_FILES))
        skipped = f"; {len(self.skipped)} skipped (not images)" if self.skipped else ""
        return (f"segmented {self.images} image{'s' * (self.images != 1)} in {self.seconds:.1f} s "
                f"({self.seconds_per_image:.2f} s/image){skipped}; results in {self.out_dir}/: {where}")


def expand_inputs(inputs: tuple[str, ...]) -> list[Input]:
    """Files, folders and glob patterns → the files to segment, in order (see the module docstring)."""
    found: list[Input] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise InputError(f"{text} is a directory with no file in it; give image files or a folder that "
                                 f"holds them")
            found += [Input(p, named=False) for p in files]
        elif not path.exists() and _GLOB_CHARS & set(text):
            files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not files:
                raise InputError(f"{text}: no file matches the pattern; check it (quote it so the shell does not "
                                 f"expand it)")
            found += [Input(p, named=False) for p in files]
        else:
            found.append(Input(path, named=True))  # a missing file is reported when it is read
    return found


def run(cfg: RunConfig) -> RunResult:
    """Segment every image of ``cfg.inputs`` and write the result files (see ``cmpf.outputs``)."""
    inputs = expand_inputs(cfg.inputs)
    expected = _image_like(inputs)
    check_outputs(cfg.out_dir, [str(p) for p in expected], cfg.dump_tensors)  # fail early on an unusable --out
    dataset = read_coco_json(cfg.coco_json) if cfg.coco_json else None
    image_ids = _image_ids(expected, dataset)
    vocabulary = load_vocabulary(cfg.vocab, cfg.classes, cfg.things, required=False)
    ids = vocabulary_ids(cfg.vocab) if cfg.vocab else None
    colors = None
    if vocabulary is None and dataset is not None:
        vocabulary, ids, colors = dataset.vocabulary, dataset.category_ids, dataset.colors
    predictor = load_predictor(cfg.source, cfg.backend, cfg.device)
    _report_weights(predictor, cfg.source)
    vocabulary = predictor.resolve_vocabulary(vocabulary)
    categories = Categories.of(vocabulary, ids, colors)
    options = options_with(predictor.options, resize=cfg.resize, sam_ensemble=cfg.sam_ensemble or None)
    if cfg.train_vocab:
        options = options.with_seen(load_vocabulary_file(cfg.train_vocab).classes)
    skipped: list[tuple[str, str]] = []
    with Staging() as stage:  # all or nothing: files move into --out only once every image is done
        writer = ResultWriter(stage.directory(cfg.out_dir, "--out"), categories)
        dump = stage.file(cfg.dump_tensors, "--dump-tensors") if cfg.dump_tensors else None
        tic = time.perf_counter()
        # closed before an error leaves the block, so that the error stays the last line on stderr
        with tqdm(total=len(inputs), desc="segment", unit="img", disable=not cfg.progress) as bar:
            for batch in _batches(inputs, cfg, skipped, bar):
                paths, images = [p for p, _ in batch], [im for _, im in batch]
                masks = [load_sam_masks(cfg.sam_masks, p, im, len(inputs)) for p, im in batch] if cfg.sam_masks \
                    else None
                result = predictor.segment(images, vocabulary, options, sam_masks=masks)
                for path, image, seg in zip(paths, images, result.segmentations):
                    if path not in image_ids:  # a found file with no image suffix that is an image all the same
                        image_ids |= _image_ids([path], dataset)
                    writer.add(seg, image, path.stem, image_ids[path], path.name)
                if dump and len(writer.images) == len(images):  # the first batch
                    dump_tensors(dump, result.tensors, result.segmentations[0], result.sam_masks[:1])
                bar.update(len(batch))
        if not writer.images:
            raise InputError(f"none of the {len(inputs)} files of {' '.join(cfg.inputs)} is an image (first: "
                             f"{skipped[0][0]}: {skipped[0][1]}); give image files")
        writer.finish()
        seconds = time.perf_counter() - tic
    return RunResult(Path(cfg.out_dir), stage.committed, len(writer.images), seconds, tuple(skipped))


def _image_like(inputs: list[Input]) -> list[Path]:
    """Named files, and found files with an image suffix: the images expected (their names must not collide)."""
    from PIL import Image

    suffixes = Image.registered_extensions()
    return [i.path for i in inputs if i.named or i.path.suffix.lower() in suffixes]


def _batches(inputs: list[Input], cfg: RunConfig, skipped: list, bar):
    """Lists of (path, uint8 (3, H, W) image), ``cfg.batch`` at a time; found non-images go to ``skipped``."""
    batch, stems = [], set()
    for item in inputs:
        try:
            image = load_image(item.path, max_pixels=cfg.max_pixels)
        except ImageError as e:
            if item.named:
                raise
            skipped.append((str(item.path), str(e).removeprefix(f"{item.path}: ")))
            bar.update(1)
            continue
        if item.path.stem in stems:
            raise InputError(f"two images are named {item.path.stem} (their results would overwrite each other); "
                             f"run them separately or rename one")
        stems.add(item.path.stem)
        batch.append((item.path, image))
        if len(batch) == cfg.batch:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class CocoImages:
    """What a COCO annotation file tells a run: image ids by file stem, and the categories as a vocabulary."""

    image_ids: dict[str, int]
    vocabulary: Vocabulary
    category_ids: tuple[int, ...]
    colors: Optional[tuple[tuple[int, ...], ...]]  # panopticapi's category "color", when every category has one


def read_coco_json(path: str) -> CocoImages:
    """``images`` (id, file_name) and ``categories`` (id, name, isthing) of a COCO panoptic/instances file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        images = {Path(im["file_name"]).stem: int(im["id"]) for im in data["images"]}
        cats = data["categories"]
        classes = tuple(tuple(s.strip() for s in c["name"].split(",")) for c in cats)
        vocabulary = Vocabulary(classes, tuple(bool(c.get("isthing", 1)) for c in cats))
        colors = tuple(tuple(int(v) for v in c["color"]) for c in cats) if all("color" in c for c in cats) else None
        return CocoImages(images, vocabulary, tuple(int(c["id"]) for c in cats), colors)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"--coco-json {path}: cannot read it ({e}); give a COCO annotation file") from None
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"--coco-json {path}: not a COCO annotation file (needs images with id and file_name, "
                         f"categories with id and name; {type(e).__name__}: {e})") from None


def _image_ids(paths: list[Path], dataset: Optional[CocoImages]) -> dict[Path, int | str]:
    """The dataset's id of each image; else the file stem, as a number when every stem is one (COCO's names)."""
    if dataset is not None:
        missing = [p for p in paths if p.stem not in dataset.image_ids]
        if missing:
            raise InputError(f"{missing[0]} is not among the images of --coco-json ({len(missing)} are not); give the "
                             f"annotation file of these images")
        return {p: dataset.image_ids[p.stem] for p in paths}
    return stem_image_ids(paths)


def load_sam_masks(where: str, path: Path, image, count: int):
    """Precomputed SAM masks of one image (``cmpf.sam_masks.load_masks``).

    ``where`` is one ``.pkl``/``.npz`` file for a single image, or a folder holding ``<stem>.pkl`` or
    ``<stem>.npz`` per image (the official ``save_sam_masks.py`` layout: ``<image_id>.pkl``).
    """
    from cmpf.sam_masks import load_masks

    folder = Path(where)
    if not folder.is_dir():
        if count != 1:
            raise InputError(f"--sam-masks {where} is one file for {count} images; give a folder of "
                             f"<image stem>.pkl|.npz files")
        return load_masks(folder, tuple(image.shape[-2:]))
    found = [f for f in (folder / f"{path.stem}.pkl", folder / f"{path.stem}.npz") if f.is_file()]
    if not found:
        raise InputError(f"--sam-masks {where}: no {path.stem}.pkl or {path.stem}.npz for {path}")
    return load_masks(found[0], tuple(image.shape[-2:]))


def _report_weights(predictor: Predictor, source: ModelSource) -> None:
    if source.artifacts:
        return
    if predictor.load_report is not None:
        print("weights:\n" + predictor.load_report.summary())
    else:
        print(f"warning: no --checkpoint: {source.model} runs with random weights")
