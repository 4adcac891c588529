"""The ``cmpf`` console script. Each subcommand: parse → config dataclass → library call → report.

Expected failures (bad image, vocabulary, checkpoint, artifact, dataset) exit 2 with one line
``error: ...``; nothing else is printed for them.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Optional, Sequence


def _cmd_run(args) -> int:
    from cmpf.run import RunConfig, run

    cfg = RunConfig(
        images=tuple(args.images), out_dir=args.out, model=args.model, checkpoint=args.checkpoint,
        clip_weights=args.clip_weights, sam_weights=args.sam_weights, artifacts=args.artifacts,
        backend=args.backend, vocab=args.vocab, classes=args.classes, things=args.things,
        train_vocab=args.train_vocab, resize=not args.no_resize, dump_tensors=args.dump_tensors,
        device=args.device,
    )
    written = run(cfg)
    print(f"wrote {len(written)} files under {args.out}")
    return 0


def _cmd_doctor(args) -> int:
    from cmpf.doctor import print_report

    print_report()
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="segment images with a checkpoint or exported artifacts")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", help="preset: frozenseg-convnext-large, frozenseg-rn50x64, fcclip-..., tiny")
    p.add_argument("--checkpoint", help="official detectron2 checkpoint (.pth)")
    p.add_argument("--clip-weights", help="open_clip weights file, when the checkpoint lacks CLIP")
    p.add_argument("--sam-weights", help="sam_vit_b_01ec64.pth, when the checkpoint lacks SAM")
    p.add_argument("--artifacts", help="directory written by `cmpf export` (instead of --model)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "aoti", "torch", "tensorrt"])
    p.add_argument("--vocab", help="vocabulary file (official id:syn1,syn2 format or one class per line)")
    p.add_argument("--classes", help="inline vocabulary: 'cat;dog,puppy;sky'")
    p.add_argument("--things", help="thing classes among them: 'cat;dog', or an official split: ade20k-150, "
                   "coco-panoptic, cityscapes (default: all classes are things)")
    p.add_argument("--train-vocab", help="training vocabulary (COCO panoptic file) for the seen-class mask")
    p.add_argument("--no-resize", action="store_true", help="skip the 800/1333 shortest-edge resize")
    p.add_argument("--out", default="out", help="output directory")
    p.add_argument("--dump-tensors", help="write the first image's tensors to this .npz")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmpf", description="CMPF / FrozenSeg and FC-CLIP deployment toolchain")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    for name in ("doctor", "check-env"):
        sub.add_parser(name, help="print what this machine offers").set_defaults(func=_cmd_doctor)
    from cmpf.evaluation.cli import add_metrics_parser

    add_metrics_parser(sub)
    for module, adder in (("cmpf.train.cli", "add_train_parser"), ("cmpf.commands", "add_commands"),
                          ("cmpf.evaluation.eval_cli", "add_eval_parser")):
        if importlib.util.find_spec(module) is not None:
            getattr(importlib.import_module(module), adder)(sub)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    from cmpf.model.checkpoint import CheckpointError
    from cmpf.preprocess import ImageError
    from cmpf.vocabulary import VocabularyError

    errors: list[type[BaseException]] = [CheckpointError, ImageError, VocabularyError, FileNotFoundError, ValueError]
    if importlib.util.find_spec("cmpf.runtime.artifacts") is not None:
        from cmpf.runtime.artifacts import ArtifactError

        errors.append(ArtifactError)
    return tuple(errors)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _expected_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
