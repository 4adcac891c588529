"""The ``cmpf train`` subcommand: parse flags → :class:`TrainConfig` → :func:`train`.

Single process: ``cmpf train --model tiny --data-root DATASETS --out runs/tiny``. Several GPUs:
``torchrun --nproc_per_node 4 -m cmpf.train.cli train ...`` (each rank trains on its own shard;
``--batch-size`` is the global batch). ``--resume`` continues from ``OUT/last_checkpoint``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

from cmpf.config import PRESETS

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` the parsed flags describe."""
    from cmpf.train.loop import TrainConfig

    return TrainConfig(
        preset=args.model, data_root=args.data_root, out_dir=args.out, dataset=args.dataset,
        vocabulary=args.vocabulary, clip_weights=args.clip_weights, sam_weights=args.sam_weights,
        max_iter=args.iters, batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
        num_workers=args.workers, seed=args.seed, checkpoint_period=args.checkpoint_period,
        log_period=args.log_period, amp=not args.no_amp, device=args.device, resume=args.resume,
    )  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from cmpf.train.loop import train

    rank = 0
    try:
        result = train(config_from_args(args))
        rank = dist.get_rank() if dist.is_initialized() else 0
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if dist.is_initialized():  # torchrun: train() joined the process group
            dist.destroy_process_group()
    if rank == 0:
        print(f"wrote {result.final_weights}")
    return EXIT_OK


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` to a ``cmpf`` subcommand set; the parser sets ``func(args) -> int``."""
    from cmpf.data.registry import DATASETS

    p = subparsers.add_parser("train", help="train on COCO panoptic (official recipe)", description=__doc__)
    p.add_argument("--model", default="frozenseg-convnext-large", choices=sorted(PRESETS), help="model preset")
    p.add_argument("--data-root", help="datasets root holding coco/ (default: $CMPF_DATASETS)")
    p.add_argument("--out", required=True, help="output directory (checkpoints, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last_checkpoint")
    p.add_argument("--dataset", default="coco-panoptic-train", choices=sorted(DATASETS), help="training set")
    p.add_argument("--vocabulary", help="*_with_prompt_eng.txt class names (default: the JSON's names)")
    p.add_argument("--clip-weights", help="open_clip weights of the frozen CLIP")
    p.add_argument("--sam-weights", help="official SAM ViT-B checkpoint")
    p.add_argument("--iters", type=int, default=368_750, help="iterations (368,750)")
    p.add_argument("--batch-size", type=int, default=16, help="global batch over all ranks (16)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (1e-4)")
    p.add_argument("--image-size", type=int, default=1024, help="LSJ crop size, a multiple of 32 (1024)")
    p.add_argument("--workers", type=int, default=4, help="data-loader workers per rank (4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--checkpoint-period", type=int, default=5000, help="iterations between checkpoints")
    p.add_argument("--log-period", type=int, default=20, help="iterations between metrics lines")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="training device")
    p.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA too")
    p.set_defaults(func=_run)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m cmpf.train.cli train ...`` (what ``torchrun -m`` runs)."""
    parser = argparse.ArgumentParser(prog="cmpf")
    commands = parser.add_subparsers(dest="command", metavar="{train}")
    commands.required = True
    add_train_parser(commands)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
