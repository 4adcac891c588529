"""Training loop: COCO-panoptic + LSJ → Hungarian-matched losses → AdamW, single process or DDP.

Consumes a :class:`TrainConfig` (model preset, datasets root, output directory, schedule); produces
checkpoints in ``out_dir`` (``checkpoint_*.pth`` with optimizer / scheduler / RNG state for
``--resume``, and ``model_final.pth`` = ``{"model": state_dict}`` in the official key names for
``cmpf run`` / ``cmpf export``: the trainable modules, plus the frozen towers when they were randomly
initialised) and ``metrics.jsonl`` (one JSON object per logged iteration). Under ``torchrun``
every rank trains on its own shard (NCCL on GPUs, gloo on CPU); the recipe is the official one
(MODEL_SPEC §9): AdamW 1e-4, weight decay 0.05 except norms and embeddings, ×0.1 LR steps at
88.9 % and 96.3 % of the iterations, full-model gradient clipping at L2 norm 0.01, AMP (float16
autocast + gradient scaling) on CUDA. The model runs under autocast; matching and losses run in
float32 (the official matcher does too; its losses see autocast's dtypes).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from cmpf.data.coco_panoptic import CocoPanopticDataset, collate_panoptic
from cmpf.data.registry import DATASETS, check_dataset
from cmpf.data.transforms import LargeScaleJitter, LSJConfig
from cmpf.distributed import dist_info, init_distributed
from cmpf.io import torch_save
from cmpf.train import checkpoint as ckpt
from cmpf.train.criterion import SetCriterion
from cmpf.train.matcher import HungarianMatcher

LR_GAMMA = 0.1
# Official steps 327,778 and 355,092 of 368,750 iterations.
OFFICIAL_LR_STEPS = (327_778 / 368_750, 355_092 / 368_750)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (defaults: the official recipe, ``batch_size`` global).

    Attributes:
        preset: model preset (``cmpf.config.PRESETS``).
        data_root: datasets root holding ``coco/`` (default ``$CMPF_DATASETS``).
        out_dir: checkpoints and metrics.
        dataset: training set in ``cmpf.data.DATASETS``.
        vocabulary: a ``*_with_prompt_eng.txt`` file naming the classes (with synonyms) in JSON
            category order; None uses the JSON category names.
        clip_weights, sam_weights: pretrained frozen towers (None: random, for tests).
        lr_steps: iterations of the ×0.1 LR drops, as fractions of ``max_iter``.
        num_points: points per mask for matching and mask losses (official 112²).
        amp: float16 autocast + gradient scaling, on CUDA only.
        device: ``auto`` picks CUDA when available.
        resume: continue from ``out_dir/last_checkpoint`` when it exists.
    """

    preset: str = "frozenseg-convnext-large"
    data_root: Optional[str] = None
    out_dir: str = "out/train"
    dataset: str = "coco-panoptic-train"
    vocabulary: Optional[str] = None
    clip_weights: Optional[str] = None
    sam_weights: Optional[str] = None
    max_iter: int = 368_750
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.05
    lr_steps: tuple[float, ...] = OFFICIAL_LR_STEPS
    clip_grad_norm: float = 0.01
    num_points: int = 12544
    amp: bool = True
    image_size: int = 1024
    num_workers: int = 4
    seed: int = 0
    checkpoint_period: int = 5000
    log_period: int = 20
    device: Literal["auto", "cpu", "cuda"] = "auto"
    resume: bool = False

    def __post_init__(self) -> None:
        if self.max_iter <= 0 or self.batch_size <= 0 or self.checkpoint_period <= 0 or self.log_period <= 0:
            raise ValueError("max_iter, batch_size, checkpoint_period and log_period must be positive")
        if self.image_size % 32:
            raise ValueError("image_size must be a multiple of 32")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` leaves behind: the final weights file, last metrics and the model."""

    out_dir: Path
    final_weights: Path
    iteration: int
    metrics: dict[str, float]
    model: nn.Module


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class ShardSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(index, augmentation seed)`` and can start mid-epoch.

    The seed depends on (seed, epoch, index) only, so augmentations are reproducible whatever the
    number of data-loader workers, and a resumed run replays the same crops.
    """

    def __init__(self, dataset: CocoPanopticDataset, *, rank: int, world_size: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``skip`` samples of this rank."""
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.skip :]
        for index in indices:
            aug_seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)[0]
            yield index, int(aug_seed)

    def __len__(self) -> int:
        return self.num_samples - self.skip


def join_process_group(cfg: TrainConfig) -> DistEnv:
    """This rank's ``DistEnv`` (``cmpf.distributed.init_distributed`` on ``cfg.device``)."""
    _, device = init_distributed(cfg.device)
    rank, world = dist_info()
    return DistEnv(rank, world, device)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed and non-decayed (norm layers, embeddings) groups."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        exempt = isinstance(module, (*_NORM_TYPES, nn.Embedding)) or type(module).__name__.startswith("LayerNorm")
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (default betas / eps) and the step schedule (×0.1 at each ``lr_steps`` fraction)."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    milestones = sorted(round(f * cfg.max_iter) for f in cfg.lr_steps)

    def factor(iteration: int) -> float:
        return LR_GAMMA ** bisect.bisect_right(milestones, iteration)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_dataset(cfg: TrainConfig) -> CocoPanopticDataset:
    """The LSJ-augmented training view of ``cfg.dataset`` (crowd dropped, empty images filtered)."""
    paths = check_dataset(DATASETS[cfg.dataset], cfg.data_root, tasks=("panoptic",))
    transform = LargeScaleJitter(LSJConfig(image_size=cfg.image_size))
    return CocoPanopticDataset.from_files(paths["panoptic_json"], paths["image_dir"], paths["panoptic_dir"], transform)


def training_vocabulary(cfg: TrainConfig, dataset: CocoPanopticDataset):
    """The class vocabulary the text classifier encodes (one entry per contiguous class)."""
    from cmpf.vocabulary import Vocabulary, load_vocabulary_file

    cats = dataset.categories
    if cfg.vocabulary is None:
        classes = tuple(tuple(s.strip() for s in name.replace(", ", ",").split(",")) for name in cats.names)
        return Vocabulary(classes, cats.isthing)
    vocab = load_vocabulary_file(cfg.vocabulary)
    if len(vocab) != len(cats.names):
        raise ValueError(f"{cfg.vocabulary} has {len(vocab)} classes but the dataset has {len(cats.names)}")
    return Vocabulary(vocab.classes, cats.isthing)


def build_model_for(cfg: TrainConfig) -> nn.Module:
    """The model to train: ``build_model(preset)`` with the pretrained frozen towers, if given."""
    from cmpf.model import build_model

    return build_model(cfg.preset, clip_weights=cfg.clip_weights, sam_weights=cfg.sam_weights, strict=False)


class _TrainForward(nn.Module):
    """Routes ``forward`` to ``forward_train`` so DDP sees (and synchronises) the training call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, text: Any) -> dict[str, Any]:
        return self.model.forward_train(images, text)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class _State:
    """The mutable pieces of a run (what a checkpoint saves)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    iteration: int = 0
    lr: float = 0.0


def _checkpoint_state(state: _State, cfg: TrainConfig, env: DistEnv) -> Optional[dict[str, Any]]:
    """Everything to resume from; gathers every rank's RNG state; None on ranks other than 0."""
    rngs: list[Any] = [ckpt.rng_state()]
    if env.world_size > 1:
        rngs = [None] * env.world_size
        dist.all_gather_object(rngs, ckpt.rng_state())
    if not env.is_main:
        return None
    return {
        "model": ckpt.trainable_state_dict(state.model),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "rng": rngs,
        "config": dataclasses.asdict(cfg),
    }


def _resume(state: _State, path: Path, env: DistEnv) -> None:
    saved = ckpt.load_checkpoint(path)
    ckpt.load_trainable_state(state.model, saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    state.iteration = int(saved["iteration"])
    rngs = saved["rng"]
    if len(rngs) != env.world_size:
        raise ValueError(f"{path} was written by {len(rngs)} ranks; resume with the same number of processes")
    ckpt.set_rng_state(rngs[env.rank])


def _batches(loader: DataLoader, sampler: ShardSampler, start_iter: int, per_rank: int) -> Iterator[Any]:
    """Endless stream of batches starting at iteration ``start_iter`` (epochs advance the shuffle)."""
    iters_per_epoch = len(sampler) // per_rank
    if iters_per_epoch == 0:
        raise ValueError(f"each rank has {len(sampler)} images, fewer than its batch of {per_rank}")
    epoch, skip = divmod(start_iter, iters_per_epoch)
    while True:
        sampler.set_epoch(epoch, skip=skip * per_rank)
        yield from loader
        epoch, skip = epoch + 1, 0


def _reduced(values: dict[str, torch.Tensor], env: DistEnv) -> dict[str, float]:
    """Mean of scalar tensors over ranks (every rank must call this)."""
    names = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in names])
    if env.world_size > 1:
        dist.all_reduce(stacked)
        stacked /= env.world_size
    return dict(zip(names, stacked.tolist()))


def _step(state: _State, criterion: SetCriterion, forward: nn.Module, batch: Any, text: Any,
          cfg: TrainConfig, env: DistEnv) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the final-output losses, the total and the gradient norm."""
    images, targets = batch
    images = images.to(env.device, non_blocking=True).float()  # (B, 3, S, S) RGB 0-255
    targets = [{"labels": t["labels"].to(env.device), "masks": t["masks"].to(env.device)} for t in targets]
    with torch.autocast(env.device.type, dtype=torch.float16, enabled=state.scaler.is_enabled()):
        outputs = forward(images, text)
    losses = criterion(outputs, targets)  # float32
    total = criterion.total(losses)
    if not torch.isfinite(total):
        raise FloatingPointError(f"loss became {total.item()} at iteration {state.iteration}: {losses}")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(total).backward()
    state.scaler.unscale_(state.optimizer)
    params = [p for group in state.optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
    state.lr = state.optimizer.param_groups[0]["lr"]  # the rate this step used
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.iteration += 1
    final = {k: losses[k] for k in ("loss_ce", "loss_mask", "loss_dice")}
    return {"loss": total, "grad_norm": grad_norm, **final}


def _setup(cfg: TrainConfig, env: DistEnv, model: Optional[nn.Module]):
    seed_everything(cfg.seed)  # same initial weights on every rank
    dataset = build_dataset(cfg)
    model = (model if model is not None else build_model_for(cfg)).to(env.device).train()
    trainable = {name for name, _ in model.trainable_parameters()}
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)  # CLIP and SAM stay frozen
    forward = _TrainForward(model)
    if env.world_size > 1:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(forward, device_ids=device_ids)
    with torch.no_grad():
        text = model.text_classifier_for(training_vocabulary(cfg, dataset))
    optimizer, scheduler = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.amp and env.device.type == "cuda")
    matcher = HungarianMatcher(num_points=cfg.num_points)
    criterion = SetCriterion(len(dataset.class_names), matcher, num_points=cfg.num_points).to(env.device)
    sampler = ShardSampler(dataset, rank=env.rank, world_size=env.world_size, seed=cfg.seed)
    per_rank, rest = divmod(cfg.batch_size, env.world_size)
    if rest:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {env.world_size} ranks")
    loader = DataLoader(
        dataset, batch_size=per_rank, sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_panoptic,
        drop_last=True, pin_memory=env.device.type == "cuda", persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    return _State(model, optimizer, scheduler, scaler), criterion, forward, text, loader, sampler, per_rank


def _final_state_dict(model: nn.Module, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The trainable state; plus the frozen towers when they are random (no weight files given),
    so that a test preset's ``model_final.pth`` loads on its own."""
    if cfg.clip_weights is None and cfg.sam_weights is None:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return ckpt.trainable_state_dict(model)


def train(cfg: TrainConfig, model: Optional[nn.Module] = None) -> TrainResult:
    """Train (or resume) a model on a COCO-panoptic set; see the module docstring.

    Args:
        cfg: the run.
        model: an already built model with the CMPF training interface (``forward_train``,
            ``text_classifier_for``, ``trainable_parameters``); default ``build_model(cfg.preset)``.
    Returns:
        The final weights path, the last logged metrics and the trained (unwrapped) model.
    """
    from tqdm import tqdm

    env = join_process_group(cfg)
    state, criterion, forward, text, loader, sampler, per_rank = _setup(cfg, env, model)  # checks the data first
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed + 1 + env.rank)  # point sampling differs between ranks
    last = ckpt.last_checkpoint(out_dir) if cfg.resume else None
    if last is not None:
        _resume(state, last, env)
    metrics: dict[str, float] = {}
    batches = _batches(loader, sampler, state.iteration, per_rank)
    bar = tqdm(total=cfg.max_iter, initial=state.iteration, disable=not env.is_main, desc="train", dynamic_ncols=True)
    tic, logged = time.perf_counter(), state.iteration
    while state.iteration < cfg.max_iter:
        values = _step(state, criterion, forward, next(batches), text, cfg, env)
        it = state.iteration
        bar.update(1)
        if it % cfg.log_period == 0 or it == cfg.max_iter:
            seconds = (time.perf_counter() - tic) / (it - logged)
            metrics = {"iteration": it, "lr": state.lr, **_reduced(values, env), "seconds_per_iter": seconds}
            tic, logged = time.perf_counter(), it
            if env.is_main:
                bar.set_postfix(loss=f"{metrics['loss']:.3f}")
                with open(out_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
        if it % cfg.checkpoint_period == 0 or it == cfg.max_iter:
            saved = _checkpoint_state(state, cfg, env)
            if saved is not None:
                ckpt.save_checkpoint(out_dir, it, saved)
    bar.close()
    final = out_dir / "model_final.pth"
    if env.is_main:
        torch_save({"model": _final_state_dict(state.model, cfg), "iteration": state.iteration}, final)
    if env.world_size > 1:
        dist.barrier()
    return TrainResult(out_dir, final, state.iteration, metrics, state.model)
