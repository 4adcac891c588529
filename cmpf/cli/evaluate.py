"""``cmpf eval``: segment a benchmark dataset and report its metrics.

Single process, or ``torchrun --nproc_per_node=N -m cmpf eval ...`` (gloo on CPU, NCCL with
``--device cuda``, one GPU per rank). Rank 0 prints the tables and writes ``--out`` (the JSON of
``cmpf metrics``, one key per task, plus ``meta``) atomically.
"""

from __future__ import annotations

from cmpf.cli import common


def add(sub) -> None:
    from cmpf.data.registry import DATASETS

    p = sub.add_parser("eval", help="PQ / mIoU / AP of a model on a benchmark dataset (torchrun for several processes)",
                       description="Segment a benchmark dataset and report its metrics (PQ / mIoU / AP).")
    common.add_source(p)
    common.add_backend(p)
    p.add_argument("--dataset", required=True, metavar="NAME", help="one of: " + ", ".join(DATASETS)
                   + "; Fusioner models: pascal-5i, coco-20i")
    p.add_argument("--fold", type=int, default=0, help="Fusioner: the PASCAL-5i / COCO-20i fold, 0..3 (default: 0)")
    p.add_argument("--splits", metavar="DIR", help="Fusioner: HSNet's data/splits folder (pascal/val/fold<i>.txt, "
                                                   "coco/val/fold<i>.pkl)")
    p.add_argument("--data-root", help="datasets root (default $CMPF_DATASETS), laid out as DETECTRON2_DATASETS")
    p.add_argument("--vocab-dir", help="directory with the official *_with_prompt_eng.txt vocabularies")
    p.add_argument("--train-vocab", help="training vocabulary for the seen classes "
                   "(default: coco_panoptic_with_prompt_eng.txt in --vocab-dir if there, else all unseen)")
    p.add_argument("--tasks", help="comma-separated subset of the dataset's tasks: panoptic,semantic,instance")
    p.add_argument("--out", metavar="FILE.json", help="write the results (percent) as JSON here")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--min-size", type=int, help="override the dataset's test short side")
    p.add_argument("--max-size", type=int, help="override the dataset's test long-side cap")
    p.add_argument("--no-resize", dest="resize", action="store_false", default=None,
                   help="skip the shortest-edge resize")
    p.add_argument("--device", default="cpu", help="cpu, cuda (cuda:LOCAL_RANK under torchrun) or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args) -> int:
    match common.family(args.model, args.artifacts):
        case "fusioner":
            return _eval_fusioner(args)
    import torch.distributed as dist

    from cmpf.distributed import init_distributed
    from cmpf.errors import InputError
    from cmpf.evaluation.dataset_eval import EvalConfig, evaluate
    from cmpf.io import check_output_file, write_json

    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be >= 1")
    if args.out:
        check_output_file(args.out, "--out")  # before the work, not after it
    source = common.source(args)  # checks the flags before joining any process group
    created, device = init_distributed(args.device)
    try:
        cfg = EvalConfig(dataset=args.dataset, source=source, backend=args.backend, data_root=args.data_root,
                         vocab_dir=args.vocab_dir, train_vocab=args.train_vocab, tasks=common.csv(args.tasks),
                         limit=args.limit, min_size=args.min_size, max_size=args.max_size, resize=args.resize,
                         device=str(device), progress=not args.no_progress)
        report = evaluate(cfg)
        if report is not None:  # rank 0
            print(report.table)
            if args.out:
                print(f"wrote {write_json(args.out, report.results, indent=2)}")
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _eval_fusioner(args) -> int:
    from cmpf.errors import InputError
    from cmpf.fusioner.evaluate import FusionerEvalConfig, evaluate_fusioner, report_table
    from cmpf.fusioner.run import FusionerSource
    from cmpf.io import check_output_file, write_json

    if not (args.data_root and args.splits):
        raise InputError("a Fusioner eval needs --data-root DIR (the dataset) and --splits DIR (HSNet's data/splits)")
    if args.out:
        check_output_file(args.out, "--out")
    source = FusionerSource(model=args.model, checkpoint=args.checkpoint, clip_weights=args.clip_weights,
                            artifacts=args.artifacts, backend=args.backend, precision=args.precision, device=args.device)
    report = evaluate_fusioner(FusionerEvalConfig(args.dataset, args.fold, args.data_root, args.splits, source,
                                                  args.limit), progress=not args.no_progress)
    print(report_table(report))
    if args.out:
        print(f"wrote {write_json(args.out, report, indent=2)}")
    return 0
