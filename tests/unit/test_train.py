"""Training loop: optimizer groups, LR schedule, sampler, checkpoints, resume, CLI (CPU, synthetic data)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cmpf.data import CocoPanopticDataset, make_synthetic_coco_panoptic
from cmpf.train import checkpoint as ckpt
from cmpf.cli import build_parser, main
from cmpf.cli.train import config_from_args
from cmpf.train.loop import OFFICIAL_LR_STEPS, ShardSampler, TrainConfig, build_optimizer, param_groups, train



class FakeSegmenter(nn.Module):
    """A tiny stand-in with the CMPF training interface (frozen ``backbone``, trainable head)."""

    def __init__(self, dim: int = 32, num_queries: int = 8, num_aux: int = 2) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, dim, 4, stride=4)
        self.backbone.requires_grad_(False)
        self.sem_seg_head = nn.ModuleDict(
            {
                "pixel": nn.Conv2d(dim, dim, 3, padding=1),
                "norm": nn.GroupNorm(8, dim),
                "query": nn.Embedding(num_queries, dim),
                "proj": nn.Linear(dim, dim),
                "ln": nn.LayerNorm(dim),
            }
        )
        self.void_embedding = nn.Embedding(1, dim)
        self.num_aux = num_aux
        self.dim = dim

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if n.startswith(("sem_seg_head.", "void_embedding."))]

    @torch.no_grad()
    def text_classifier_for(self, vocabulary) -> torch.Tensor:
        return torch.randn(len(vocabulary), self.dim, generator=torch.Generator().manual_seed(len(vocabulary)))

    def forward_train(self, images: torch.Tensor, text: torch.Tensor) -> dict:
        head = self.sem_seg_head
        feats = F.relu(head["norm"](head["pixel"](self.backbone(images / 127.5 - 1.0))))  # (B, D, S/4, S/4)
        queries = head["query"].weight
        masks = torch.einsum("qd,bdhw->bqhw", queries, feats)
        weights = masks.sigmoid().flatten(2)
        pooled = torch.einsum("bqn,bdn->bqd", weights, feats.flatten(2)) / (weights.sum(-1, keepdim=True) + 1)
        logits = head["ln"](head["proj"](pooled + queries)) @ torch.cat([text, self.void_embedding.weight]).T
        scale = [(i + 1) / (self.num_aux + 1) for i in range(self.num_aux)]
        aux = [{"pred_logits": logits * s, "pred_masks": masks * s} for s in scale]
        return {"pred_logits": logits, "pred_masks": masks, "aux_outputs": aux}


def fake_model(seed: int = 0) -> FakeSegmenter:
    torch.manual_seed(seed)
    return FakeSegmenter()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    make_synthetic_coco_panoptic(root, 6, 80, seed=0)  # 5 usable images
    return root


def small_config(data_root, out_dir, **overrides) -> TrainConfig:
    base = dict(
        preset="tiny", data_root=str(data_root), out_dir=str(out_dir), max_iter=6, batch_size=2, image_size=64,
        num_workers=0, checkpoint_period=3, log_period=1, num_points=256, seed=0,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def test_param_groups_exempt_norms_and_embeddings():
    model = FakeSegmenter()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    head = model.sem_seg_head
    assert ids(no_decay["params"]) == ids(
        [*head["norm"].parameters(), *head["ln"].parameters(), head["query"].weight, model.void_embedding.weight]
    )
    assert ids(decay["params"]) == ids([*head["pixel"].parameters(), *head["proj"].parameters()])


def test_lr_schedule_steps():
    model = FakeSegmenter()
    cfg = TrainConfig(max_iter=100, lr_steps=(0.5, 0.8))
    optimizer, scheduler = build_optimizer(model, cfg)
    lrs = [cfg.lr * scheduler.lr_lambdas[0](it) for it in range(100)]  # the LR iteration `it` uses
    with pytest.warns(UserWarning, match="optimizer.step"):  # stepping without gradients
        for _ in range(50):
            scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert lrs[0] == lrs[49] == pytest.approx(1e-4)
    assert lrs[50] == lrs[79] == pytest.approx(1e-5) and lrs[80] == lrs[99] == pytest.approx(1e-6)
    assert [round(f * 368_750) for f in OFFICIAL_LR_STEPS] == [327_778, 355_092]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.999)


def test_shard_sampler(data_root):
    ds = CocoPanopticDataset.from_files(
        data_root / "coco/annotations/panoptic_train2017.json", data_root / "coco/train2017",
        data_root / "coco/panoptic_train2017",
    )  # fmt: skip
    shards = [ShardSampler(ds, rank=r, world_size=2, seed=0) for r in range(2)]
    for s in shards:
        s.set_epoch(1)
    keys = [list(s) for s in shards]
    assert len(keys[0]) == len(keys[1]) == 3  # 5 images padded to 6, split between ranks
    assert {i for i, _ in keys[0] + keys[1]} == set(range(5))
    assert keys[0] == list(shards[0]), "deterministic"
    shards[0].set_epoch(1, skip=2)
    assert list(shards[0]) == keys[0][2:] and len(shards[0]) == 1
    shards[0].set_epoch(2)
    assert [seed for _, seed in shards[0]] != [seed for _, seed in keys[0]]


def test_checkpoint_helpers(tmp_path):
    model = FakeSegmenter()
    state = ckpt.trainable_state_dict(model)
    assert state and all(k.startswith(("sem_seg_head.", "void_embedding.")) for k in state)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    saved = ckpt.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    path = ckpt.save_checkpoint(tmp_path, 7, {"model": state, "rng": [saved]})
    assert path.name == "checkpoint_0000007.pth" and ckpt.last_checkpoint(tmp_path) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_0000007.pth", "last_checkpoint"]
    loaded = ckpt.load_checkpoint(path)  # weights_only
    assert loaded["iteration"] == 7
    ckpt.set_rng_state(loaded["rng"][0])
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    other = FakeSegmenter()
    ckpt.load_trainable_state(other, loaded["model"])
    assert all(torch.equal(a, b) for a, b in zip(ckpt.trainable_state_dict(other).values(), state.values()))
    with pytest.raises(KeyError, match="missing"):
        ckpt.load_trainable_state(other, {})
    from cmpf.train.loop import _final_state_dict

    assert set(_final_state_dict(model, TrainConfig(clip_weights="clip.bin"))) == set(state)  # towers from files
    assert set(_final_state_dict(model, TrainConfig())) == set(model.state_dict())  # random towers kept
    (tmp_path / "last_checkpoint").write_text("checkpoint_0000099.pth")
    with pytest.raises(FileNotFoundError, match="checkpoint_0000099.pth"):
        ckpt.last_checkpoint(tmp_path)


def test_train_writes_checkpoints_and_metrics(data_root, tmp_path):
    model = fake_model()
    model.backbone.weight.requires_grad_(True)  # train() must re-freeze what is not trainable
    frozen = model.backbone.weight.detach().clone()
    head = model.sem_seg_head["pixel"].weight.detach().clone()
    result = train(small_config(data_root, tmp_path, max_iter=4, checkpoint_period=2, log_period=3), model)
    assert result.iteration == 4 and torch.equal(model.backbone.weight, frozen)
    assert not torch.equal(model.sem_seg_head["pixel"].weight, head)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint_0000002.pth", "checkpoint_0000004.pth", "last_checkpoint", "metrics.jsonl",
                     "model_final.pth"]  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [3, 4]
    assert {"loss", "loss_ce", "loss_mask", "loss_dice", "lr", "grad_norm"} <= set(lines[0])
    assert all(np.isfinite(m["loss"]) for m in lines)
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert set(final) == set(model.state_dict())  # random frozen towers are included
    saved = ckpt.load_checkpoint(tmp_path / "checkpoint_0000004.pth")
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config", "iteration"} <= set(saved)
    assert saved["config"]["max_iter"] == 4 and len(saved["rng"]) == 1


@pytest.mark.parametrize("model_name", ["fake", "tiny"])
def test_resume_matches_uninterrupted_run(data_root, tmp_path, model_name):
    make = fake_model if model_name == "fake" else lambda: None  # None: train() builds the tiny preset
    cfg = small_config(data_root, tmp_path)  # 6 iterations over 2-batch epochs of 5 images
    full = train(cfg, make())
    expected = ckpt.trainable_state_dict(full.model)
    full_log = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "last_checkpoint").write_text("checkpoint_0000003.pth")  # pretend it stopped at 3
    (tmp_path / "metrics.jsonl").unlink()
    resumed = train(small_config(data_root, tmp_path, resume=True), make())
    assert resumed.iteration == 6
    got = ckpt.trainable_state_dict(resumed.model)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() != []
    resumed_losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert resumed_losses == [json.loads(line)["loss"] for line in full_log[3:]]


def test_cli(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0 and "--resume" in capsys.readouterr().out
    args = build_parser().parse_args(["train", "--model", "tiny", "--data-root", "D", "--out", "O", "--resume",
                              "--iters", "10", "--batch-size", "4", "--image-size", "64", "--no-amp"])  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.preset, cfg.data_root, cfg.out_dir, cfg.resume, cfg.max_iter) == ("tiny", "D", "O", True, 10)
    assert (cfg.batch_size, cfg.image_size, cfg.amp, cfg.lr, cfg.weight_decay) == (4, 64, False, 1e-4, 0.05)
    assert main(["train", "--model", "tiny", "--data-root", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "panoptic_train2017.json" in capsys.readouterr().err


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig(image_size=100)
    with pytest.raises(ValueError, match="unknown dataset"):
        TrainConfig(dataset="nope")


def test_vocabulary_file(data_root, tmp_path):
    from cmpf.train.loop import build_dataset, training_vocabulary

    cfg = small_config(data_root, tmp_path)
    dataset = build_dataset(cfg)
    assert training_vocabulary(cfg, dataset).names == list(dataset.class_names)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(f"{i}:{name},thing {i}\n" for i, name in enumerate(dataset.class_names)))
    got = training_vocabulary(small_config(data_root, tmp_path, vocabulary=str(vocab)), dataset)
    assert got.classes[1] == (dataset.class_names[1], "thing 1") and got.is_thing == dataset.categories.isthing
    vocab.write_text("0:a\n")
    with pytest.raises(ValueError, match="1 classes but the dataset has 7"):
        training_vocabulary(small_config(data_root, tmp_path, vocabulary=str(vocab)), dataset)


def test_real_model_smoke(data_root, tmp_path, preset="tiny"):
    result = train(small_config(data_root, tmp_path, preset=preset, max_iter=2, num_points=128, log_period=2))
    assert result.iteration == 2 and np.isfinite(result.metrics["loss"])
    from cmpf.model import build_model

    # random frozen towers: model_final.pth carries them too and loads on its own, strictly
    loaded = build_model(preset, checkpoint=result.final_weights)
    for key, value in result.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    saved = ckpt.load_checkpoint(tmp_path / "checkpoint_0000002.pth")["model"]
    assert "void_embedding.weight" in saved and any(k.startswith("sem_seg_head.predictor.") for k in saved)
    assert all(k.startswith(("sem_seg_head.", "void_embedding.")) for k in saved)


@torch.no_grad()
def _panoptic_quality(model, text, val, categories) -> float:
    """PQ (percent) of in-vocabulary predictions on a synthetic split, with ``cmpf.evaluation``."""
    from cmpf.data.coco_panoptic import read_rgb, rgb2id
    from cmpf.evaluation import PanopticAccumulator
    from cmpf.postprocess import panoptic_inference

    info = json.loads(val.json_path.read_text())
    acc = PanopticAccumulator([{"id": i, "isthing": int(t)} for i, t in enumerate(categories.isthing)])
    model.eval()
    for ann, image in zip(info["annotations"], info["images"]):
        pixels = torch.from_numpy(read_rgb(val.image_dir / image["file_name"]).copy()).permute(2, 0, 1)[None].float()
        out = model.forward_train(pixels, text)
        masks = F.interpolate(out["pred_masks"], size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        is_thing = torch.tensor(categories.isthing)
        ids, segments = panoptic_inference(out["pred_logits"][0], masks[0], is_thing, 0.0, 0.8)  # official thresholds
        gt_segments = [{**s, "category_id": categories.id_to_index[s["category_id"]]} for s in ann["segments_info"]]
        acc.add(rgb2id(read_rgb(val.panoptic_dir / ann["file_name"])), gt_segments, ids.long().numpy(), segments)
    model.train()
    return acc.result()["All"]["pq"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "tiny-fcclip"])
def test_training_lowers_loss_and_raises_pq(tmp_path, preset):
    """A few hundred iterations on synthetic shapes: loss falls, held-out PQ rises well above untrained."""
    from cmpf.model import build_model
    from cmpf.train.loop import build_dataset, seed_everything, training_vocabulary

    make_synthetic_coco_panoptic(tmp_path, 48, 64, seed=0, split="train2017")
    val = make_synthetic_coco_panoptic(tmp_path, 12, 64, seed=1, split="val2017", num_crowd_only=0)
    cfg = TrainConfig(
        preset=preset, data_root=str(tmp_path), out_dir=str(tmp_path / "out"), max_iter=200, batch_size=4,
        lr=1e-3, image_size=64, num_workers=1, checkpoint_period=1000, log_period=25, num_points=1024,
    )  # fmt: skip
    dataset = build_dataset(cfg)
    seed_everything(cfg.seed)  # the initial weights train() starts from
    untrained = build_model(cfg.preset).train()
    text = untrained.text_classifier_for(training_vocabulary(cfg, dataset))
    pq_untrained = _panoptic_quality(untrained, text, val, dataset.categories)
    result = train(cfg)
    text = result.model.text_classifier_for(training_vocabulary(cfg, dataset))
    pq_trained = _panoptic_quality(result.model, text, val, dataset.categories)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    print(f"loss {losses[0]:.2f} -> {losses[-1]:.2f}; PQ {pq_untrained:.1f} -> {pq_trained:.1f}")
    assert np.mean(losses[-3:]) < 0.7 * losses[0]
    assert pq_trained > pq_untrained + 15.0
