"""The ``cmpf metrics {panoptic,semantic,instance}`` subcommands.

Each prints a table on stdout, optionally writes the result JSON (percent, ``null`` for undefined)
with ``--out``, and returns 0; bad input gives one ``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from cmpf.evaluation.report import (
    MetricsInputError,
    format_instance,
    format_panoptic,
    format_semantic,
    write_json_atomic,
)

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def _run_panoptic(args: argparse.Namespace) -> tuple[dict, str]:
    from cmpf.evaluation.panoptic import panoptic_accumulator_from_files

    acc = panoptic_accumulator_from_files(
        args.gt_json, args.gt_dir, args.pred_json, args.pred_dir, progress=not args.no_progress
    )
    result = acc.result()
    return result, format_panoptic(result, acc.names)


def _run_semantic(args: argparse.Namespace) -> tuple[dict, str]:
    from cmpf.evaluation.semantic import evaluate_semantic

    result = evaluate_semantic(
        args.gt_dir, args.pred_dir, args.num_classes, args.ignore_label, progress=not args.no_progress
    )
    return result, format_semantic(result)


def _run_instance(args: argparse.Namespace) -> tuple[dict, str]:
    from cmpf.evaluation.instance import instance_accumulator_from_files

    acc = instance_accumulator_from_files(args.gt_json, args.pred_json)
    result = acc.result()
    return result, format_instance(result, acc.names)


def _command(run: Callable[[argparse.Namespace], tuple[dict, str]]) -> Callable[[argparse.Namespace], int]:
    """Wrap a runner: print the table, write ``--out``, map bad input to exit code 2."""

    def func(args: argparse.Namespace) -> int:
        try:
            result, table = run(args)
            print(table)
            if args.out:
                path = write_json_atomic(args.out, result)
                print(f"wrote {path}")
        except (MetricsInputError, OSError) as e:
            message = " ".join(str(e).split())
            print(f"error: {message}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return EXIT_OK

    return func


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="FILE.json", help="write the results (percent) as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_metrics_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``metrics`` with its ``panoptic`` / ``semantic`` / ``instance`` subcommands.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers()``.

    Returns:
        The ``metrics`` parser. Each leaf sets ``func(args) -> int`` (0 ok, 2 bad input).
    """
    parser = subparsers.add_parser(
        "metrics", help="PQ / mIoU / AP of saved predictions", description=__doc__.splitlines()[0]
    )
    tasks = parser.add_subparsers(dest="metrics_task", metavar="{panoptic,semantic,instance}")
    tasks.required = True

    p = tasks.add_parser("panoptic", help="PQ / SQ / RQ (panopticapi semantics)")
    p.add_argument("--gt-json", required=True, help="COCO panoptic ground-truth JSON")
    p.add_argument("--gt-dir", required=True, help="folder of ground-truth panoptic PNGs")
    p.add_argument("--pred-json", required=True, help="prediction JSON (dict with annotations, or a list)")
    p.add_argument("--pred-dir", required=True, help="folder of predicted panoptic PNGs")
    _common(p)
    p.set_defaults(func=_command(_run_panoptic))

    p = tasks.add_parser("semantic", help="mIoU / fwIoU / mACC / pACC (detectron2 semantics)")
    p.add_argument("--gt-dir", required=True, help="folder of ground-truth label PNGs")
    p.add_argument("--pred-dir", required=True, help="folder of predicted label PNGs (same file stems)")
    p.add_argument("--num-classes", required=True, type=int, help="number of classes N")
    p.add_argument("--ignore-label", type=int, default=255, help="ignored ground-truth label (255)")
    _common(p)
    p.set_defaults(func=_command(_run_semantic))

    p = tasks.add_parser("instance", help="COCO segm AP (pycocotools)")
    p.add_argument("--gt-json", required=True, help="COCO instance ground-truth JSON")
    p.add_argument("--pred-json", required=True, help="COCO results JSON (RLE segmentations)")
    _common(p)
    p.set_defaults(func=_command(_run_instance))
    return parser
