"""``cmpf metrics {panoptic,semantic,instance}``: PQ / mIoU / AP of saved prediction files.

Each prints a table on stdout and optionally writes the result JSON (percent, ``null`` for
undefined) with ``--out``. The predictions can be what ``cmpf run --out OUT`` writes:
``OUT/panoptic.json`` + ``OUT/panoptic/``, ``OUT/semantic/``, ``OUT/instances.json``.
"""

from __future__ import annotations

import argparse
from typing import Callable


def _panoptic(args: argparse.Namespace) -> tuple[dict, str]:
    from cmpf.evaluation.panoptic import panoptic_accumulator_from_files
    from cmpf.evaluation.report import format_panoptic

    acc = panoptic_accumulator_from_files(args.gt_json, args.gt_dir, args.pred_json, args.pred_dir,
                                          progress=not args.no_progress)
    result = acc.result()
    return result, format_panoptic(result, acc.names)


def _semantic(args: argparse.Namespace) -> tuple[dict, str]:
    from cmpf.evaluation.report import format_semantic
    from cmpf.evaluation.semantic import evaluate_semantic

    result = evaluate_semantic(args.gt_dir, args.pred_dir, args.num_classes, args.ignore_label,
                               progress=not args.no_progress)
    return result, format_semantic(result)


def _instance(args: argparse.Namespace) -> tuple[dict, str]:
    from cmpf.evaluation.instance import instance_accumulator_from_files
    from cmpf.evaluation.report import format_instance

    acc = instance_accumulator_from_files(args.gt_json, args.pred_json)
    result = acc.result()
    return result, format_instance(result, acc.names)


def _command(compute: Callable[[argparse.Namespace], tuple[dict, str]]) -> Callable[[argparse.Namespace], int]:
    def main(args: argparse.Namespace) -> int:
        from cmpf.io import check_output_file, write_json

        if args.out:
            check_output_file(args.out, "--out")  # before the work, not after it
        result, table = compute(args)
        print(table)
        if args.out:
            print(f"wrote {write_json(args.out, result, indent=2)}")
        return 0

    return main


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="FILE.json", help="write the results (percent) as JSON here (default: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")


def add(sub) -> None:
    parser = sub.add_parser("metrics", help="PQ / mIoU / AP of saved predictions",
                            description="PQ / mIoU / AP of saved prediction files, such as those `cmpf run --out "
                                        "OUT` writes (OUT/panoptic.json with OUT/panoptic, OUT/semantic, "
                                        "OUT/instances.json).")
    tasks = parser.add_subparsers(dest="metrics_task", metavar="{panoptic,semantic,instance}", required=True,
                                  help="the task whose metrics to compute")

    p = tasks.add_parser("panoptic", help="PQ / SQ / RQ (panopticapi semantics)")
    p.add_argument("--gt-json", required=True, help="COCO panoptic ground-truth JSON")
    p.add_argument("--gt-dir", required=True, help="folder of ground-truth panoptic PNGs")
    p.add_argument("--pred-json", required=True,
                   help="prediction JSON (dict with annotations, or a list); cmpf run: OUT/panoptic.json")
    p.add_argument("--pred-dir", required=True, help="folder of predicted panoptic PNGs; cmpf run: OUT/panoptic")
    _common(p)
    p.set_defaults(func=_command(_panoptic))

    p = tasks.add_parser("semantic", help="mIoU / fwIoU / mACC / pACC (detectron2 semantics)")
    p.add_argument("--gt-dir", required=True, help="folder of ground-truth label PNGs")
    p.add_argument("--pred-dir", required=True,
                   help="folder of predicted label PNGs (same file stems); cmpf run: OUT/semantic")
    p.add_argument("--num-classes", required=True, type=int, help="number of classes N")
    p.add_argument("--ignore-label", type=int, default=255, help="ignored ground-truth label (default: 255)")
    _common(p)
    p.set_defaults(func=_command(_semantic))

    p = tasks.add_parser("instance", help="COCO segm AP (pycocotools)")
    p.add_argument("--gt-json", required=True, help="COCO instance ground-truth JSON")
    p.add_argument("--pred-json", required=True,
                   help="COCO results JSON (RLE segmentations); cmpf run: OUT/instances.json")
    _common(p)
    p.set_defaults(func=_command(_instance))
