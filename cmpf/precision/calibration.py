"""The calibration set: images from a folder, run through the fp32 pipeline, each graph's inputs kept.

Static quantisation needs activations as the deployed pipeline produces them (resized, padded,
normalised images; the real vocabulary's text embeddings; decoder features of real images), so
the inputs are captured from ``cmpf.pipeline.segment`` with recording runners
(``cmpf.runtime.recording``) rather than drawn at random. The set is named by a hash of its files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
from tqdm import tqdm

from cmpf.config import InferenceOptions, ModelConfig
from cmpf.errors import InputError
from cmpf.io import sha256_file
from cmpf.runtime.base import Runner
from cmpf.runtime.recording import RecordingRunner
from cmpf.vocabulary import Vocabulary

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_IMAGES = 4  # fewer gives ranges from too few activations to trust


@dataclass(frozen=True)
class CalibrationSet:
    paths: tuple[Path, ...]
    sha256: str  # of the sorted (name, sha256) pairs of the files

    def to_json(self) -> dict:
        return {"images": len(self.paths), "sha256": self.sha256}


def calibration_set(directory: Optional[str], limit: Optional[int] = None,
                    min_images: int = MIN_IMAGES) -> CalibrationSet:
    """The images of ``directory`` (sorted; the first ``limit``), refused when unreadable or too few."""
    if not directory:
        raise InputError("int8 needs calibration images: give --calib-images DIR (a few dozen images like the "
                         "ones you will segment)")
    root = Path(directory)
    if not root.is_dir():
        raise InputError(f"--calib-images {directory}: not a directory")
    try:
        paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as e:
        raise InputError(f"--calib-images {directory}: cannot list it ({e.strerror})") from None
    paths = paths[:limit] if limit else paths
    if len(paths) < min_images:
        raise InputError(f"--calib-images {directory}: {len(paths)} image(s) ({', '.join(IMAGE_SUFFIXES)}); "
                         f"calibration needs at least {min_images}")
    digest = hashlib.sha256()
    for p in paths:
        try:
            digest.update(f"{p.name}:{sha256_file(p)}\n".encode())
        except OSError as e:
            raise InputError(f"{p}: unreadable calibration image ({e.strerror})") from None
    return CalibrationSet(tuple(paths), digest.hexdigest())


def capture_feeds(runners: Mapping[str, Runner], images: CalibrationSet, vocabulary: Vocabulary, cfg: ModelConfig,
                  options: InferenceOptions, graphs: set[str], max_calls: int = 64,
                  progress: bool = True, text=None) -> dict[str, list[dict[str, np.ndarray]]]:
    """{graph: [feed, ...]}: the inputs ``graphs`` receive while the pipeline segments every image.

    ``text``: the vocabulary's ``TextClassifier`` where the caller has it (the text encoder does not run,
    so it cannot be among ``graphs``)."""
    from cmpf.pipeline import segment
    from cmpf.preprocess import load_image
    from cmpf.text import TextCache

    recorders = {g: (RecordingRunner(r, limit=max_calls) if g in graphs else r) for g, r in runners.items()}
    text_cache = TextCache(recorders["text_encoder"], options.text_batch)  # the vocabulary is encoded once
    if text is not None:
        text_cache.put(vocabulary, text)
    for path in tqdm(images.paths, desc="calibrate", unit="image", disable=not progress):
        segment([load_image(path)], vocabulary, recorders, cfg, options, text_cache=text_cache)
    feeds = {g: [{k: v.cpu().numpy() for k, v in call.items()} for call in r.calls]
             for g, r in recorders.items() if isinstance(r, RecordingRunner)}
    unused = sorted(g for g, f in feeds.items() if not f)
    if unused:
        raise InputError(f"graphs {unused} never ran on the calibration images, so they cannot be calibrated; "
                         f"keep them fp32 (--precision GRAPH=PRECISION pairs for the others)")
    return feeds
