"""Fusioner training on the base classes of PASCAL-5i / COCO-20i with the official recipe (``FU:train.py``).

Consumes a preset (random fusion/decoder, or ``checkpoint`` / ``clip_weights`` for the frozen towers),
the dataset root with HSNet's split files and a fold; produces ``{"model": state_dict}`` checkpoints
in the official layout (the strict loader reads them back). The recipe (FUSIONER_SPEC §8):
- episodes: the fold's training pairs (``cmpf.data.fewshot.episodes(..., "trn")``), shuffled each epoch;
  target = the binary mask of the episode's class, 255 = ignored;
- crop and augmentation (``cmpf.fusioner.augment``, on torchvision): one of, at p = 0.5 each,
  ``RandomResizedCrop(224, scale 0.5-1, ratio 3/4-4/3)`` or ``SmallestMaxSize(224)`` + ``RandomCrop(224)``;
  then the ``Compose(p=0.5)`` block of ColorJitter, GaussNoise, HorizontalFlip, ElasticTransform and
  ShiftScaleRotate (each p = 0.5; PASCAL and COCO parameters), drawn from a generator seeded with
  ``seed``; ``augment=False`` (``--no-augment``) keeps the crop only. Evaluation never augments;
- loss: BCE with logits averaged over the non-ignored pixels of each image (``loss_with_ignored_area``);
- a batch of 32 episodes = 32 single-image forwards, each ``backward(loss / 32)``, then one step;
- fusion: AdamW(betas 0.9, 0.999); 2-D+ weights decayed, biases and 1-D parameters not; per-iteration
  lr = linear warm-up 0 → 1e-3 over 10 epochs then cosine to 2e-6 over 500; group-0 weight decay =
  cosine 0.01 → 0.4 over all 510 epochs (``FU:utils/utils.py::cosine_scheduler``);
- decoder: Adam(lr 1e-3), weight decay 0, never scheduled; the CLIP towers frozen.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmpf.data.fewshot import FewShotDataset, episodes, load_episode
from cmpf.errors import InputError
from cmpf.fusioner import build_model
from cmpf.fusioner.augment import augment_episode, training_transform
from cmpf.fusioner.checkpoint import CheckpointError, clip_to_fusioner_keys, read_state_dict
from cmpf.fusioner.inference import normalise
from cmpf.fusioner.prompts import tokenize_class
from cmpf.io import check_output_file, torch_save


@dataclass(frozen=True)
class FusionerRecipe:
    """The official optimisation settings (``FU:configs/__init__.py``)."""

    batch_size: int = 32
    fusion_lr: float = 1e-3
    fusion_min_lr: float = 2e-6
    warmup_epochs: int = 10
    training_epochs: int = 500
    weight_decay: float = 0.01
    weight_decay_end: float = 0.4
    decoder_lr: float = 1e-3
    beta1: float = 0.9
    crop_size: int = 224

    @property
    def epochs(self) -> int:
        return self.warmup_epochs + self.training_epochs


@dataclass(frozen=True)
class FusionerTrainConfig:
    dataset: FewShotDataset
    fold: int
    data_root: str
    splits: str
    out: str  # the final checkpoint file
    model: str = "fusioner-vitl14"
    checkpoint: Optional[str] = None  # initial weights (e.g. the frozen CLIP towers inside a full state dict)
    clip_weights: Optional[str] = None
    iters: Optional[int] = None  # None: the whole schedule (510 epochs)
    recipe: FusionerRecipe = FusionerRecipe()
    seed: int = 0
    augment: bool = True  # the Compose(p=0.5) block after the crop (the paper: on)
    device: str = "cpu"
    log_every: int = 20


def cosine_schedule(base: float, final: float, epochs: int, iters_per_epoch: int, warmup_epochs: int = 0,
                    start_warmup: float = 0.0) -> np.ndarray:
    """Per-iteration values: linear warm-up (``start_warmup`` → ``base``), then a half cosine to ``final``."""
    warmup = np.linspace(start_warmup, base, warmup_epochs * iters_per_epoch) if warmup_epochs > 0 else np.array([])
    steps = np.arange(epochs * iters_per_epoch - len(warmup))
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / len(steps)))
    return np.concatenate((warmup, cosine))


def param_groups(module: nn.Module) -> list[dict]:
    """[decayed: every ≥ 2-D weight; not decayed: biases and 1-D parameters] (``get_params_groups``)."""
    decayed, plain = [], []
    for name, p in module.named_parameters():
        (plain if name.endswith(".bias") or p.dim() == 1 else decayed).append(p)
    return [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]


def masked_bce(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    """BCE with logits, mean over non-ignored pixels (plain mean when every pixel is ignored)."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    keep = ~ignore
    return (loss * keep).sum() / keep.sum() if keep.any() else loss.mean()


def epoch_batches(n: int, batch_size: int, rng: random.Random):
    """Endless batches of episode indices: a fresh shuffle per epoch, the last batch of each epoch partial."""
    while True:
        order = rng.sample(range(n), n)
        for i in range(0, n, batch_size):
            yield order[i:i + batch_size]


def train_fusioner(cfg: FusionerTrainConfig, progress: bool = True) -> dict:
    """Train; returns {"checkpoint", "iters", "losses" (per iteration), "seconds"}."""
    out = check_output_file(cfg.out, "--out")
    todo = episodes(cfg.dataset, cfg.data_root, cfg.splits, cfg.fold, "trn")
    if not todo:
        raise InputError(f"{cfg.splits}: no {cfg.dataset} training pairs for fold {cfg.fold}")
    recipe = cfg.recipe
    per_epoch = math.ceil(len(todo) / recipe.batch_size)  # DataLoader batches per epoch (last one partial)
    iters = cfg.iters or recipe.epochs * per_epoch
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)  # the episode order
    generator = torch.Generator().manual_seed(cfg.seed)  # the crops and augmentations
    transform = training_transform(cfg.dataset, recipe.crop_size, cfg.augment)
    if cfg.checkpoint:  # a full state dict (or fusion + decoder with clip_weights): strict, as the official loader
        model = build_model(cfg.model, cfg.checkpoint, cfg.clip_weights)
    else:  # from scratch: random fusion and decoder, the CLIP towers from clip_weights when given
        model = build_model(cfg.model)
        if cfg.clip_weights:
            _load_towers(model, cfg.clip_weights)
    model = model.to(cfg.device).train()
    fusion_opt = torch.optim.AdamW(param_groups(model.fusion), betas=(recipe.beta1, 0.999))
    decoder_opt = torch.optim.Adam(param_groups(model.decoder), lr=recipe.decoder_lr)
    lr = cosine_schedule(recipe.fusion_lr, recipe.fusion_min_lr, recipe.epochs, per_epoch, recipe.warmup_epochs)
    wd = cosine_schedule(recipe.weight_decay, recipe.weight_decay_end, recipe.epochs, per_epoch)
    normalisation = "pascal" if cfg.dataset == "pascal-5i" else "coco"
    text: dict[str, torch.Tensor] = {}  # the frozen text tower: one embedding per class name
    losses, batches, start = [], epoch_batches(len(todo), recipe.batch_size, rng), time.perf_counter()
    for step in range(iters):
        for i, group in enumerate(fusion_opt.param_groups):  # past their end the schedules keep the last value
            group["lr"] = float(lr[min(step, len(lr) - 1)])
            if i == 0:
                group["weight_decay"] = float(wd[min(step, len(wd) - 1)])
        fusion_opt.zero_grad()
        decoder_opt.zero_grad()
        batch = [todo[j] for j in next(batches)]
        total = 0.0
        for episode in batch:
            image, target, ignore = load_episode(episode)
            crop, target, ignore = augment_episode(transform, image, target, ignore, generator)
            pixels = normalise(crop, normalisation).to(cfg.device)
            if episode.class_name not in text:
                with torch.no_grad():
                    text[episode.class_name] = model.encode_class(tokenize_class(episode.class_name).to(cfg.device))
            logits = model(pixels, text[episode.class_name])[0, 0]
            loss = masked_bce(logits, target.float().to(cfg.device), ignore.to(cfg.device))
            (loss / len(batch)).backward()
            total += float(loss.detach())
        fusion_opt.step()
        decoder_opt.step()
        losses.append(total / len(batch))
        if progress and (step + 1) % cfg.log_every == 0:
            print(f"[{step + 1}/{iters}] loss {losses[-1]:.4f} lr {lr[min(step, len(lr) - 1)]:.2e} "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch_save({"model": state}, out)
    return {"checkpoint": str(out), "iters": iters, "losses": losses, "seconds": time.perf_counter() - start}


def _load_towers(model: nn.Module, clip_weights: str) -> None:
    """Every ``text_model.*`` / ``img_model.*`` tensor from a CLIP file (OpenAI or open_clip key names)."""
    state = clip_to_fusioner_keys(read_state_dict(clip_weights))
    towers = [k for k in model.state_dict() if k.startswith(("text_model.", "img_model."))]
    missing = [k for k in towers if k not in state]
    wrong = [k for k in towers if k in state and state[k].shape != model.state_dict()[k].shape]
    if missing or wrong:
        key = (missing or wrong)[0]
        raise CheckpointError(f"{clip_weights}: {len(missing)} CLIP tensors missing and {len(wrong)} of another shape "
                              f"(e.g. {key}); give the {model.cfg.clip_model} weights")
    model.load_state_dict({k: state[k] for k in towers}, strict=False)
