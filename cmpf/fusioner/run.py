"""``cmpf run`` for Fusioner: images + class names → a binary mask per class and a semantic map per image.

Consumes image files (or folders of them) and a model source: a Fusioner preset with its checkpoint
(the eager model) or a Fusioner artifact directory (``cmpf export --model tiny-fusioner``, any
backend whose files it holds). The graphs run behind runners (``RunnerGraphs``, the torch backend
included) through the one protocol of ``cmpf.fusioner.inference``, the text encoder once per class
name (``TextEmbeddingCache``). Writes, into ``--out``: ``semantic/<stem>.png`` (label ids: 0 background,
k = the k-th class, a palette PNG), ``masks/<stem>/<k>-<name>.png`` (0 / 255 per class) and
``fusioner.json`` (the mode, classes, backend and every file), staged and moved in together with
``fusioner.json`` last; ``--dump-tensors`` holds the first image's tensors. Inputs are checked before
the model loads: an image smaller than one window, K = 0 or a name over 77 tokens is one line.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch
from PIL import Image

from cmpf.backend import Backend
from cmpf.errors import InputError
from cmpf.fusioner import build_model
from cmpf.fusioner.config import FusionerConfig, Mode, SegmentOptions, get_config
from cmpf.fusioner.graphs import FUSION_DECODER, TEXT_ENCODER, VISUAL_ENCODER, FusionerTorchRunner, graph_specs
from cmpf.fusioner.inference import FusionerSegmentation, TextEmbeddingCache, class_names_of, segment
from cmpf.fusioner.manifest import FusionerManifest
from cmpf.fusioner.prompts import FusionerInputError
from cmpf.io import Staging, atomic_write, check_output_dir, write_json
from cmpf.runtime import load_runners
from cmpf.runtime.base import Runner
from cmpf.vocabulary import load_vocabulary

RESULTS_NAME = "fusioner.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class FusionerSource:
    """Where the graphs come from and what runs them (``cmpf run``, ``cmpf eval`` and the benchmark)."""

    model: Optional[str] = None  # a Fusioner preset (with checkpoint / clip_weights), or
    checkpoint: Optional[str] = None
    clip_weights: Optional[str] = None
    artifacts: Optional[str] = None  # a Fusioner artifact directory
    backend: Optional[str] = None  # default: torch with a preset, onnxruntime with artifacts
    precision: Optional[str] = None  # artifacts only, as cmpf.manifest.Manifest.runtime_plan
    device: str = "cpu"

    def __post_init__(self) -> None:
        if bool(self.model) == bool(self.artifacts):
            raise InputError("give one of --model PRESET (with --checkpoint CKPT) and --artifacts DIR")
        if self.artifacts and (self.checkpoint or self.clip_weights):
            raise InputError(f"--artifacts {self.artifacts} carries its own weights; drop --checkpoint / "
                             f"--clip-weights")

    def manifest(self) -> Optional[FusionerManifest]:
        return FusionerManifest.read(self.artifacts) if self.artifacts else None


@dataclass(frozen=True)
class FusionerRunConfig:
    images: tuple[str, ...]  # image files or folders of images (not recursive)
    out_dir: str
    source: FusionerSource
    vocab: Optional[str] = None
    classes: Optional[str] = None  # 'cat;dog' (default with artifacts: the exported vocabulary)
    mode: Optional[Mode] = None  # default: the manifest's, else per-class (the official evaluation)
    dump_tensors: Optional[str] = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in ("per-class", "joint"):
            raise InputError(f"--mode must be per-class or joint, got {self.mode!r}")


@dataclass(frozen=True)
class FusionerRunResult:
    out_dir: Path
    images: int
    classes: tuple[str, ...]
    mode: Mode
    backend: str
    text_encoder_calls: int
    seconds: float

    def summary(self) -> str:
        return (f"segmented {self.images} image(s) with {len(self.classes)} class(es), {self.mode} mode, "
                f"{self.backend} backend, in {self.seconds:.1f} s; text encoder ran {self.text_encoder_calls} "
                f"time(s); results in {self.out_dir} ({RESULTS_NAME})")


class RunnerGraphs:
    """The three Fusioner graphs behind runners, as ``cmpf.fusioner.inference.WindowGraphs``."""

    def __init__(self, runners: Mapping[str, Runner], cfg: FusionerConfig, device: str | torch.device = "cpu"):
        self.runners, self.cfg, self._device = dict(runners), cfg, torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.runners[VISUAL_ENCODER]({"pixel_values": pixels})["image_tokens"]

    def encode_class(self, template_token_ids: torch.Tensor) -> torch.Tensor:
        return self.runners[TEXT_ENCODER]({"template_token_ids": template_token_ids})["class_embedding"]

    def segment_window(self, image_tokens: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        inputs = {"image_tokens": image_tokens, "text_embeddings": text_embeddings}
        return self.runners[FUSION_DECODER](inputs)["mask_logits"]


def load_graphs(source: FusionerSource, manifest: Optional[FusionerManifest] = None,
                ) -> tuple[RunnerGraphs, SegmentOptions, Backend]:
    """Runners of the three graphs of ``source``, and its default options (the manifest's, else the official).

    Args:
        manifest: ``source.artifacts``'s, when already read.
    """
    if source.model:
        backend = Backend.parse(source.backend or "torch")
        if backend is not Backend.TORCH:
            raise InputError(f"--backend {backend} runs exported files; export them (`cmpf export --model "
                             f"{source.model} --out DIR`) and give --artifacts DIR, or use --backend torch")
        if source.precision and source.precision != "fp32":
            raise InputError(f"--precision {source.precision} runs an artifact directory's files; give --artifacts")
        model_cfg, options = get_config(source.model), SegmentOptions()
    else:
        manifest = manifest or source.manifest()
        manifest.require_all_graphs()
        backend = Backend.parse(source.backend or "onnxruntime")
        model_cfg, options = manifest.model, manifest.inference
    if backend is Backend.TORCH:
        if source.precision and source.precision != "fp32":
            raise InputError(f"--precision {source.precision}: the torch backend runs the fp32 eager model")
        if manifest is not None:  # the files the export recorded
            checkpoint, clip_weights = manifest.weights_path(), manifest.clip_weights_path()
        else:
            checkpoint, clip_weights = source.checkpoint, source.clip_weights
        model = build_model(model_cfg, checkpoint, clip_weights).to(source.device)
        runners = {g: FusionerTorchRunner(model, g) for g in graph_specs(model_cfg)}
    else:
        runners = load_runners(manifest, backend, source.device, source.precision)
    return RunnerGraphs(runners, model_cfg, source.device), options, backend


def class_names(vocab: Optional[str], classes: Optional[str], manifest: Optional[FusionerManifest],
                ) -> tuple[str, ...]:
    """The K class names of a run (``--classes`` / ``--vocab``, else the export's), checked."""
    if classes is not None and not classes.replace(";", "").strip():
        raise FusionerInputError("--classes names no class (K=0); give at least one, e.g. --classes 'cat;dog'")
    vocabulary = load_vocabulary(vocab, classes, None, required=False)
    if vocabulary is None and manifest is not None:
        vocabulary = manifest.vocabulary
    if vocabulary is None:
        raise FusionerInputError("no classes (K=0): give --classes 'cat;dog' or --vocab FILE (or export with them)")
    return class_names_of(vocabulary)


def image_paths(inputs: tuple[str, ...]) -> list[Path]:
    """Files as given, folders as their image files (sorted); unique stems (they name the outputs)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        elif p.is_file():
            paths.append(p)
        else:
            raise InputError(f"{item}: no such file or folder")
    if not paths:
        raise InputError(f"no images in {', '.join(inputs)}")
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise InputError(f"{stems[p.stem]} and {p} have the same stem {p.stem!r}, which names their results; "
                             f"rename one or run them separately")
        stems[p.stem] = p
    return paths


def check_image_size(path: Path, window: int) -> None:
    """An image at least one window on each side (read from the header only, before the model loads)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: not a readable image ({' '.join(str(e).split())})") from None
    if height < window or width < window:
        raise FusionerInputError(f"{path}: {width}x{height} pixels is smaller than one {window}x{window} window; "
                                 f"give an image with both sides >= {window}")


def read_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def run_fusioner(cfg: FusionerRunConfig, progress: bool = True) -> FusionerRunResult:
    """Segment every image of ``cfg``; returns what was done (every file is written when this returns)."""
    start = time.perf_counter()
    out = check_output_dir(cfg.out_dir, "--out")
    paths = image_paths(cfg.images)
    manifest = cfg.source.manifest()
    window = (manifest.model if manifest else get_config(cfg.source.model)).window_size
    for path in paths:
        check_image_size(path, window)
    names = class_names(cfg.vocab, cfg.classes, manifest)
    graphs, options, backend = load_graphs(cfg.source, manifest)
    if cfg.mode:
        options = dataclasses.replace(options, mode=cfg.mode)
    cache = TextEmbeddingCache(graphs)
    records = []
    with Staging(last=(RESULTS_NAME,)) as stage:
        staged = stage.directory(out, "--out")
        dump = stage.file(cfg.dump_tensors, "--dump-tensors") if cfg.dump_tensors else None
        for i, path in enumerate(paths):
            if progress:
                print(f"[{i + 1}/{len(paths)}] {path}", flush=True)
            seg = segment(graphs, read_image(path), names, options, text_cache=cache)
            records.append(write_image_results(staged, path.stem, seg))
            if dump is not None and i == 0:
                dump_tensors(dump, seg)
        write_json(staged / RESULTS_NAME, {
            "family": "fusioner", "mode": options.mode, "classes": list(names), "backend": str(backend),
            "source": {"artifacts": cfg.source.artifacts} if cfg.source.artifacts else {
                "model": cfg.source.model, "checkpoint": cfg.source.checkpoint},
            "inference": dataclasses.asdict(options), "labels": {"0": "background",
                                                                 **{str(k + 1): n for k, n in enumerate(names)}},
            "images": records,
        })
    return FusionerRunResult(out, len(paths), names, options.mode, str(backend), cache.encoded,
                             time.perf_counter() - start)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"


def _palette() -> list[int]:
    """Background black, then well-spread colours (golden-ratio hues), 256 RGB triples."""
    import colorsys

    colours = [(0, 0, 0)] + [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95))
                             for i in range(255)]
    return [v for rgb in colours for v in rgb]


def write_image_results(out: Path, stem: str, seg: FusionerSegmentation) -> dict:
    """``semantic/<stem>.png`` and ``masks/<stem>/<k>-<name>.png`` under ``out``; the image's record."""
    k = len(seg.class_names)
    if k > 255:
        raise InputError(f"{k} classes do not fit an 8-bit semantic map; give at most 255")
    semantic = Image.fromarray(seg.labels.numpy().astype(np.uint8))
    semantic.putpalette(_palette())  # "L" → "P": the pixel values stay the label ids
    files = {"semantic": f"semantic/{stem}.png", "masks": {}}
    atomic_write(out / files["semantic"], lambda tmp: semantic.save(tmp, format="PNG"))
    for j, name in enumerate(seg.class_names):
        rel = f"masks/{stem}/{j + 1}-{_safe(name)}.png"
        mask = Image.fromarray(seg.masks[j].numpy().astype(np.uint8) * 255)
        atomic_write(out / rel, lambda tmp, m=mask: m.save(tmp, format="PNG"))
        files["masks"][name] = rel
    h, w = seg.labels.shape
    return {"image": stem, "height": h, "width": w, "windows": len(seg.windows), **files,
            "foreground_fraction": {n: float(seg.masks[j].float().mean()) for j, n in enumerate(seg.class_names)}}


def dump_tensors(path: Path, seg: FusionerSegmentation) -> Path:
    """The first image's tensors: per-class text embeddings (K, D), visual tokens of the first window
    (1, N, D), logits at original resolution (K, H, W), binary masks (K, H, W), labels (H, W)."""
    arrays = {
        "text_embeddings": seg.text_embeddings.numpy(), "visual_tokens": seg.first_window_tokens.numpy(),
        "logits": seg.logits.numpy(), "masks": seg.masks.numpy(), "labels": seg.labels.numpy(),
        "class_names": np.array(seg.class_names), "mode": np.array(seg.mode),
    }

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, save)
