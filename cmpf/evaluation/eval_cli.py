"""The ``cmpf eval`` subcommand: segment a benchmark dataset and report its metrics.

Single process, or ``torchrun --nproc_per_node=N -m cmpf eval ...`` (gloo on CPU, NCCL with
``--device cuda``, one GPU per rank). Rank 0 prints the tables and writes ``--out`` (the JSON of
``cmpf metrics``, one key per task, plus ``meta``) atomically. Missing or malformed dataset files
exit 2 with one ``error: ...`` line naming the file.
"""

from __future__ import annotations

import argparse
from typing import Any

EXIT_OK = 0


def _run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from cmpf.evaluation.dataset_eval import EvalConfig, evaluate
    from cmpf.evaluation.gather import init_distributed
    from cmpf.evaluation.report import write_json_atomic

    if (args.model is None) == (args.artifacts is None):
        raise ValueError("give --model PRESET (with --checkpoint) or --artifacts DIR")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be >= 1")
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None
    created, device = init_distributed(args.device)
    try:
        cfg = EvalConfig(
            dataset=args.dataset, data_root=args.data_root, vocab_dir=args.vocab_dir, model=args.model,
            checkpoint=args.checkpoint, clip_weights=args.clip_weights, sam_weights=args.sam_weights,
            artifacts=args.artifacts, backend=args.backend, train_vocab=args.train_vocab, tasks=tasks,
            limit=args.limit, min_size=args.min_size, max_size=args.max_size, resize=not args.no_resize,
            device=device, progress=not args.no_progress,
        )  # fmt: skip
        report = evaluate(cfg)
        if report is not None:  # rank 0
            print(report.table)
            if args.out:
                print(f"wrote {write_json_atomic(args.out, report.results)}")
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
    return EXIT_OK


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval``; it sets ``func(args) -> int`` (0 ok; expected errors raise, ``cmpf.cli`` exits 2)."""
    from cmpf.data.registry import DATASETS

    p = subparsers.add_parser(
        "eval", help="PQ / mIoU / AP of a model on a benchmark dataset (torchrun for several processes)",
        description="Segment a benchmark dataset and report its metrics (PQ / mIoU / AP).",
    )  # fmt: skip
    p.add_argument("--model", help="preset: frozenseg-convnext-large, frozenseg-rn50x64, fcclip-..., tiny")
    p.add_argument("--checkpoint", help="official detectron2 checkpoint (.pth); without it: random weights")
    p.add_argument("--clip-weights", help="open_clip weights file, when the checkpoint lacks CLIP")
    p.add_argument("--sam-weights", help="sam_vit_b_01ec64.pth, when the checkpoint lacks SAM")
    p.add_argument("--artifacts", help="directory written by `cmpf export` (instead of --model)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "aoti", "torch", "tensorrt"])
    p.add_argument("--dataset", required=True, metavar="NAME", help="one of: " + ", ".join(DATASETS))
    p.add_argument("--data-root", help="datasets root (default $CMPF_DATASETS), laid out as DETECTRON2_DATASETS")
    p.add_argument("--vocab-dir", help="directory with the official *_with_prompt_eng.txt vocabularies")
    p.add_argument("--train-vocab", help="training vocabulary for the seen-class mask "
                   "(default: coco_panoptic_with_prompt_eng.txt in --vocab-dir if there, else all unseen)")
    p.add_argument("--tasks", help="comma-separated subset of the dataset's tasks: panoptic,semantic,instance")
    p.add_argument("--out", metavar="FILE.json", help="write the results (percent) as JSON here")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--min-size", type=int, help="override the dataset's test short side")
    p.add_argument("--max-size", type=int, help="override the dataset's test long-side cap")
    p.add_argument("--no-resize", action="store_true", help="skip the shortest-edge resize")
    p.add_argument("--device", default="cpu", help="cpu, cuda (cuda:LOCAL_RANK under torchrun) or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    return p
