"""``cmpf train``: parse flags → ``TrainConfig`` → ``cmpf.train.loop.train``.

Single process: ``cmpf train --model tiny --data-root DATASETS --out runs/tiny``. Several GPUs:
``torchrun --nproc_per_node 4 -m cmpf train ...`` (each rank trains on its own shard;
``--batch-size`` is the global batch). ``--resume`` continues from ``OUT/last_checkpoint``.
"""

from __future__ import annotations

import argparse

from cmpf.config import PRESETS


FEWSHOT = ("pascal-5i", "coco-20i")  # Fusioner's training sets (cmpf.data.fewshot)


def add(sub) -> None:
    from cmpf.data.registry import DATASETS
    from cmpf.fusioner.config import PRESETS as FUSIONER_PRESETS

    p = sub.add_parser("train", help="train on COCO panoptic (official recipe)",
                       description="Train on COCO panoptic with the official recipe (one process or torchrun); "
                                   "Fusioner presets train on the base classes of PASCAL-5i / COCO-20i.")
    p.add_argument("--model", default="frozenseg-convnext-large", choices=sorted(PRESETS) + sorted(FUSIONER_PRESETS),
                   help="model preset (default: frozenseg-convnext-large)")
    p.add_argument("--data-root", help="datasets root holding coco/ (default: $CMPF_DATASETS)")
    p.add_argument("--out", required=True, help="output directory (checkpoints, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last_checkpoint")
    p.add_argument("--dataset", default="coco-panoptic-train", choices=sorted(DATASETS) + list(FEWSHOT),
                   help="training set (default: coco-panoptic-train; Fusioner: pascal-5i or coco-20i)")
    p.add_argument("--fold", type=int, default=0, help="Fusioner: the fold whose base classes train (default: 0)")
    p.add_argument("--splits", metavar="DIR", help="Fusioner: HSNet's data/splits folder")
    p.add_argument("--vocabulary", help="*_with_prompt_eng.txt class names (default: the JSON's names)")
    p.add_argument("--clip-weights", help="open_clip weights of the frozen CLIP")
    p.add_argument("--sam-weights", help="official SAM ViT-B checkpoint")
    p.add_argument("--iters", type=int, help="iterations (default: 368,750; Fusioner: the official 510 epochs)")
    p.add_argument("--batch-size", type=int, help="global batch over all ranks (default: 16; Fusioner: 32)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    p.add_argument("--image-size", type=int, default=1024, help="LSJ crop size, a multiple of 32 (default: 1024)")
    p.add_argument("--workers", type=int, default=4, help="data-loader workers per rank (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--checkpoint-period", type=int, default=5000, help="iterations between checkpoints (default: 5000)")
    p.add_argument("--log-period", type=int, default=20, help="iterations between metrics lines (default: 20)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="training device (default: auto)")
    p.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA too")
    p.add_argument("--no-augment", action="store_true",
                   help="Fusioner: crop only, without the paper's colour / noise / flip / elastic / affine block")
    p.set_defaults(func=main)


def config_from_args(args: argparse.Namespace):
    """The ``TrainConfig`` the parsed flags describe."""
    from cmpf.train.loop import TrainConfig

    return TrainConfig(
        preset=args.model, data_root=args.data_root, out_dir=args.out, dataset=args.dataset,
        vocabulary=args.vocabulary, clip_weights=args.clip_weights, sam_weights=args.sam_weights,
        max_iter=368_750 if args.iters is None else args.iters, batch_size=args.batch_size or 16, lr=args.lr, image_size=args.image_size,
        num_workers=args.workers, seed=args.seed, checkpoint_period=args.checkpoint_period,
        log_period=args.log_period, amp=not args.no_amp, device=args.device, resume=args.resume,
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    if args.dataset in FEWSHOT:
        return _train_fusioner(args)
    if args.no_augment:
        from cmpf.errors import InputError

        raise InputError(f"--no-augment applies to Fusioner training (--dataset {' or '.join(FEWSHOT)}); drop it "
                         f"for --dataset {args.dataset}")
    import torch.distributed as dist

    from cmpf.train.loop import train

    try:
        result = train(config_from_args(args))
        rank = dist.get_rank() if dist.is_initialized() else 0
    finally:
        if dist.is_initialized():  # torchrun: train() joined the process group
            dist.destroy_process_group()
    if rank == 0:
        print(f"wrote {result.final_weights}")
    return 0


def _train_fusioner(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from cmpf.errors import InputError
    from cmpf.fusioner.config import PRESETS as FUSIONER_PRESETS
    from cmpf.fusioner.train import FusionerRecipe, FusionerTrainConfig, train_fusioner

    if args.model not in FUSIONER_PRESETS or not (args.data_root and args.splits):
        raise InputError(f"--dataset {args.dataset} trains a Fusioner preset ({', '.join(FUSIONER_PRESETS)}) and needs "
                         f"--data-root DIR and --splits DIR (HSNet's data/splits)")
    recipe = FusionerRecipe() if args.batch_size is None else dataclasses.replace(FusionerRecipe(),
                                                                                   batch_size=args.batch_size)
    cfg = FusionerTrainConfig(args.dataset, args.fold, args.data_root, args.splits,
                              str(Path(args.out) / "model_final.pth"), model=args.model,
                              clip_weights=args.clip_weights, iters=args.iters, recipe=recipe, seed=args.seed,
                              augment=not args.no_augment, device=_device(args.device), log_every=args.log_period)
    print(f"wrote {train_fusioner(cfg)['checkpoint']}")
    return 0


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
