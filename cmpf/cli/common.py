"""Flags that several commands share, each defined once: model source, backend, vocabulary, sizes."""

from __future__ import annotations

import argparse
from typing import Optional

from cmpf.backend import BACKEND_NAMES


def csv(text: Optional[str]) -> Optional[tuple[str, ...]]:
    return tuple(s.strip() for s in text.split(",") if s.strip()) if text else None


def add_source(p: argparse.ArgumentParser, *, artifacts: bool = True) -> None:
    p.add_argument("--model", "--preset", dest="model", metavar="PRESET",
                   help="preset: frozenseg-convnext-large, frozenseg-rn50x64, fcclip-convnext-large, fcclip-rn50x64, "
                        "tiny; Fusioner: fusioner-vitl14, tiny-fusioner")
    p.add_argument("--checkpoint", help="official detectron2 checkpoint (.pth); without it: random weights")
    p.add_argument("--clip-weights", help="open_clip weights file, when the checkpoint lacks CLIP")
    p.add_argument("--sam-weights", help="sam_vit_b_01ec64.pth, when the checkpoint lacks SAM")
    if artifacts:
        p.add_argument("--artifacts", metavar="DIR", help="directory written by `cmpf export` (instead of --model)")
        p.add_argument("--precision", metavar="P",
                       help="with --artifacts: files of this precision (fp16, bf16, int8, fp8) wherever a graph has "
                            "one, or GRAPH=P pairs such as 'sam_image_encoder=int8,decoder=fp16' (default: fp32)")


def source(args: argparse.Namespace, default_model: Optional[str] = None):
    from cmpf.predictor import ModelSource

    model = args.model
    if model is None and getattr(args, "artifacts", None) is None:
        model = default_model
    return ModelSource(model=model, checkpoint=args.checkpoint, clip_weights=args.clip_weights,
                       sam_weights=args.sam_weights, artifacts=getattr(args, "artifacts", None),
                       precision=getattr(args, "precision", None))


def family(model: Optional[str] = None, artifacts: Optional[str] = None) -> str:
    """The model family a command dispatches on: ``"fusioner"`` or ``"cmpf"`` (CMPF / FrozenSeg and FC-CLIP),
    from the preset name or from the artifact directory's manifest."""
    if artifacts:
        from cmpf.manifest import manifest_family

        return manifest_family(artifacts)
    from cmpf.fusioner.config import PRESETS as FUSIONER_PRESETS

    return "fusioner" if model in FUSIONER_PRESETS else "cmpf"


def add_backend(p: argparse.ArgumentParser, choices=BACKEND_NAMES) -> None:
    p.add_argument("--backend", choices=choices, default=None,
                   help="runner of the graphs (default: onnxruntime with --artifacts, torch with --model)")


def add_vocabulary(p: argparse.ArgumentParser, *, train: bool = True, default: str = "") -> None:
    p.add_argument("--vocab", metavar="FILE", help="vocabulary file (official id:syn1,syn2 format or one class per "
                                                   "line)" + default)
    p.add_argument("--classes", help="inline vocabulary: 'cat;dog,puppy;sky'")
    p.add_argument("--things", help="thing classes among them: 'cat;dog', or an official split: ade20k-150, "
                                    "coco-panoptic, cityscapes (default: all classes are things)")
    if train:
        p.add_argument("--train-vocab", metavar="FILE",
                       help="training vocabulary (COCO panoptic file): its classes count as seen in the ensemble")


def add_sizes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-size", type=int, help="short side of the resized image (default: the model's, 800)")
    p.add_argument("--max-size", type=int, help="long-side cap of the resized image (default: the model's, 1333)")
    p.add_argument("--no-resize", dest="resize", action="store_false", default=None,
                   help="skip the official shortest-edge resize")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def add_max_pixels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-pixels", type=positive_int, metavar="N",
                   help="refuse images with more pixels, as possible decompression bombs (default: Pillow's "
                        "limit, about 89 million)")


def add_device(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument("--device", default=default, help=f"torch device (default: {default})")
