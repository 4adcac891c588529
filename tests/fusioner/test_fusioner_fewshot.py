"""PASCAL-5i / COCO-20i readers, folds, episode order and the HSNet metric, on generated files; ``cmpf eval``."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from cmpf.data.fewshot import (
    COCO_CLASSES, PASCAL_CLASSES, base_labels, class_names, episodes, load_episode, novel_labels, read_coco_pickle,
    read_pascal_list,
)
from cmpf.data.fewshot_metric import FewShotIoU
from cmpf.errors import InputError


def test_folds_are_the_official_ones():
    names = lambda ds, f: [class_names(ds)[i] for i in novel_labels(ds, f)]  # noqa: E731
    assert names("pascal-5i", 0) == ["aeroplane", "bicycle", "bird", "boat", "bottle"]
    assert names("pascal-5i", 3) == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert names("coco-20i", 1) == [  # FUSIONER_SPEC §7.1
        "bicycle", "bus", "trafficlight", "bench", "horse", "bear", "umbrella", "frisbee", "kite", "surfboard", "cup",
        "bowl", "orange", "pizza", "sofa", "toilet", "remote", "oven", "book", "teddybear"]
    assert names("coco-20i", 0)[:4] == ["person", "aeroplane", "boat", "parkingmeter"]
    assert len(PASCAL_CLASSES) == 21 and len(COCO_CLASSES) == 81
    for ds, n in (("pascal-5i", 20), ("coco-20i", 80)):
        allnovel = sorted(i for f in range(4) for i in novel_labels(ds, f))
        assert allnovel == list(range(1, n + 1))  # the folds partition the classes
        assert set(base_labels(ds, 2)).isdisjoint(novel_labels(ds, 2)) and len(base_labels(ds, 2)) == n * 3 // 4
    with pytest.raises(InputError, match="fold 4"):
        novel_labels("pascal-5i", 4)


def _pascal(root, splits, rng):
    """Three val pairs (one image with two fold-0 classes) and train lists without a final newline."""
    jpg, png = root / "VOCdevkit" / "VOC2012" / "JPEGImages", root / "SegmentationClassAug"
    jpg.mkdir(parents=True)
    png.mkdir(parents=True)
    for name, labels in (("2007_000001", (1, 3)), ("2007_000002", (5,))):
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(jpg / f"{name}.jpg")
        mask = np.zeros((224, 224), np.uint8)
        for j, label in enumerate(labels):
            mask[40 + 80 * j:100 + 80 * j, 30:200] = label
        mask[:, :3] = 255  # a void border
        Image.fromarray(mask).save(png / f"{name}.png")
    (splits / "pascal" / "val").mkdir(parents=True)
    (splits / "pascal" / "trn").mkdir(parents=True)
    (splits / "pascal" / "val" / "fold0.txt").write_text("2007_000001__1\n2007_000001__3\n2007_000002__5\n")
    for f in range(4):
        (splits / "pascal" / "trn" / f"fold{f}.txt").write_text(f"a{f}__{5 * f + 1}\nb{f}__{5 * f + 2}")


def test_pascal_episodes_in_file_order_with_the_official_reader(tmp_path):
    root, splits = tmp_path / "VOC", tmp_path / "splits"
    _pascal(root, splits, np.random.default_rng(0))
    val = episodes("pascal-5i", root, splits, 0)
    assert [(e.image.name, e.label, e.class_name) for e in val] == [
        ("2007_000001.jpg", 1, "aeroplane"), ("2007_000001.jpg", 3, "bird"), ("2007_000002.jpg", 5, "bottle")]
    assert val[0].mask == root / "SegmentationClassAug" / "2007_000001.png"
    image, gt, ignore = load_episode(val[1])
    assert image.shape == (224, 224, 3) and gt.sum() == 60 * 170 and ignore.sum() == 224 * 3
    assert not (gt & ignore).any()
    # train = the other three folds' lists; each loses its last line (no final newline), as upstream
    trn = episodes("pascal-5i", root, splits, 0, "trn")
    assert [e.image.stem for e in trn] == ["a1", "a2", "a3"]
    assert read_pascal_list(splits / "pascal" / "val" / "fold0.txt")[2] == ("2007_000002", 5)


def test_coco_episodes_are_the_first_1000_sorted_pairs_with_the_doubled_folder(tmp_path):
    splits = tmp_path / "splits"
    (splits / "coco" / "val").mkdir(parents=True)
    names = [f"val2014/COCO_val2014_{i:012d}.jpg" for i in range(700)]
    table = {0: names[::-1], 4: names[100:500] + names[100:110], 8: names[:5]}  # duplicates count once
    with open(splits / "coco" / "val" / "fold0.pkl", "wb") as f:
        pickle.dump(table, f)
    eps = episodes("coco-20i", tmp_path / "coco", splits, 0)
    pairs = sorted({(n, k) for k, v in table.items() for n in v})
    assert len(eps) == 1000 and [(e.image.relative_to(tmp_path / "coco" / "val2014").as_posix(), e.label - 1)
                                  for e in eps] == pairs[:1000]
    assert eps[0].image == tmp_path / "coco" / "val2014" / "val2014" / "COCO_val2014_000000000000.jpg"
    assert eps[0].mask == tmp_path / "coco" / "annotation" / "val2014" / "val2014" / "COCO_val2014_000000000000.png"
    assert {e.class_name for e in eps} == {"person", "aeroplane", "boat"}


def test_a_split_pickle_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "fold0.pkl"
    path.write_bytes(pickle.dumps({0: [Evil()]}))
    with pytest.raises(InputError, match="only plain data"):
        read_coco_pickle(path)


def test_metric_matches_a_hand_count():
    m = FewShotIoU(21)
    gt = np.zeros((4, 5), bool)
    gt[1:3, 1:4] = True  # 6 fg pixels
    pred = np.zeros_like(gt)
    pred[1:3, 2:5] = True  # 6 predicted, 4 of them right
    ignore = np.zeros_like(gt)
    ignore[0, 4] = ignore[1, 4] = True  # one predicted-fg pixel (1, 4) is ignored
    assert m.update(pred, gt, ignore, label=3)
    assert not m.update(pred, np.zeros_like(gt), ignore, label=4)  # empty ground truth: not scored
    # kept: 18 pixels; fg: inter 4, pred 5, gt 6 → union 7; bg: pred 13, gt 12, inter 11 → union 14
    assert m.intersection[:, 3].tolist() == [11, 4] and m.union[:, 3].tolist() == [14, 7]
    m.update(gt, gt, np.zeros_like(gt), label=7)  # a perfect episode of another class
    r = m.compute()
    assert r["per_class"] == pytest.approx({3: 4 / 7, 7: 1.0}) and r["miou"] == pytest.approx((4 / 7 + 1) / 2)
    assert r["fbiou"] == pytest.approx(((11 + 14) / (14 + 14) + (4 + 6) / (7 + 6)) / 2)
    assert r["episodes"] == 2


def _forbid_augmentation(monkeypatch):
    """Every torchvision v2 transform (the training augmentation's parts) raises when called."""
    from torchvision.transforms import v2

    def refuse(self, *inputs):
        raise AssertionError(f"{type(self).__name__} called outside training")

    for cls in (v2.Transform, v2.Compose, v2.RandomApply, v2.RandomChoice):
        monkeypatch.setattr(cls, "forward", refuse)


def test_cmpf_eval_on_generated_pascal(tmp_path, capsys, monkeypatch):
    import torch

    from cmpf.cli import main
    from cmpf.fusioner.augment import augment_episode, training_transform

    _forbid_augmentation(monkeypatch)  # evaluation reads its images untouched
    with pytest.raises(AssertionError, match="outside training"):  # (the patch does reach the augmentation)
        augment_episode(training_transform("pascal-5i"), np.zeros((240, 240, 3), np.uint8),
                        np.zeros((240, 240), bool), np.zeros((240, 240), bool), torch.Generator())
    root, splits = tmp_path / "VOC", tmp_path / "splits"
    _pascal(root, splits, np.random.default_rng(0))
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "tiny-fusioner", "--dataset", "pascal-5i", "--fold", "0", "--data-root",
                 str(root), "--splits", str(splits), "--out", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["episodes_scored"] == 3 and report["mode"] == "per-class" and report["normalisation"] == "pascal"
    assert set(report["per_class_iou"]) == {"aeroplane", "bird", "bottle"}
    assert 0 <= report["fbiou"] <= 1 and report["miou"] == pytest.approx(np.mean(list(report["per_class_iou"].values())))
    assert "mIoU" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", "--model", "tiny-fusioner", "--dataset", "pascal-5i", "--fold", "x"])
    assert main(["eval", "--model", "tiny-fusioner", "--dataset", "pascal-5i", "--fold", "0", "--data-root",
                 str(tmp_path / "nowhere"), "--splits", str(splits)]) == 2
    assert "missing" in capsys.readouterr().err


# -- training ----------------------------------------------------------------------------------------


def test_schedules_and_parameter_groups_follow_the_recipe(tiny_fusioner):
    from cmpf.fusioner.train import cosine_schedule, param_groups

    lr = cosine_schedule(1e-3, 2e-6, epochs=510, iters_per_epoch=4, warmup_epochs=10)
    assert len(lr) == 2040 and lr[0] == 0 and lr[39] == pytest.approx(1e-3)  # linear warm-up over 10 epochs
    assert lr[40] == pytest.approx(1e-3) and lr[-1] == pytest.approx(2e-6, rel=1e-3)
    assert np.all(np.diff(lr[40:]) <= 0)
    wd = cosine_schedule(0.01, 0.4, epochs=510, iters_per_epoch=4)
    assert wd[0] == pytest.approx(0.01) and wd[-1] == pytest.approx(0.4, rel=1e-4) and np.all(np.diff(wd) >= 0)
    decayed, plain = param_groups(tiny_fusioner.fusion)
    names = {id(p): n for n, p in tiny_fusioner.fusion.named_parameters()}
    assert {"cls_emb", "proj_patch", "proj_classes", "blocks.0.attn.qkv.weight"} <= {names[id(p)]
                                                                                    for p in decayed["params"]}
    assert plain["weight_decay"] == 0 and all(names[id(p)].endswith(".bias") or p.dim() == 1
                                              for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(names)


def test_loss_ignores_the_void_pixels():
    import torch

    from cmpf.fusioner.train import masked_bce

    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ignore = torch.tensor([[False, False], [True, False]])
    per_pixel = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert masked_bce(logits, target, ignore) == pytest.approx(float(per_pixel[~ignore].mean()))
    assert masked_bce(logits, target, torch.ones_like(ignore)) == pytest.approx(float(per_pixel.mean()))


def test_training_steps_move_only_the_fusion_and_decoder(tmp_path):
    import torch

    from cmpf.fusioner import build_model
    from cmpf.fusioner.train import FusionerRecipe, FusionerTrainConfig, train_fusioner

    root, splits = tmp_path / "VOC", tmp_path / "splits"
    rng = np.random.default_rng(2)
    jpg, png = root / "VOCdevkit" / "VOC2012" / "JPEGImages", root / "SegmentationClassAug"
    jpg.mkdir(parents=True)
    png.mkdir(parents=True)
    (splits / "pascal" / "trn").mkdir(parents=True)
    for f, label in ((1, 6), (2, 11), (3, 16)):  # fold 0 trains on the other folds' classes
        name = f"2008_00000{f}"
        Image.fromarray(rng.integers(0, 255, (240, 250, 3), dtype=np.uint8)).save(jpg / f"{name}.jpg")
        mask = np.zeros((240, 250), np.uint8)
        mask[50:150, 60:200], mask[-2:] = label, 255
        Image.fromarray(mask).save(png / f"{name}.png")
        (splits / "pascal" / "trn" / f"fold{f}.txt").write_text(f"{name}__{label}\n")
    torch.manual_seed(0)
    before = build_model("tiny-fusioner").state_dict()
    out = tmp_path / "ckpt.pth"
    result = train_fusioner(FusionerTrainConfig("pascal-5i", 0, str(root), str(splits), str(out), model="tiny-fusioner",
                                                iters=2, recipe=FusionerRecipe(batch_size=2)), progress=False)
    assert result["iters"] == 2 and all(np.isfinite(result["losses"]))
    after = build_model("tiny-fusioner", checkpoint=out).state_dict()  # the official layout, loaded strictly
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("fusion.", "decoder.")) for k in changed)
    assert any(k.startswith("decoder.") for k in changed) and "fusion.cls_emb" in changed

    # from scratch with CLIP weights given apart (open_clip names), through the command line
    from cmpf.cli import main

    towers = {k: torch.randn_like(v) for k, v in before.items() if k.startswith(("img_model.", "text_model."))}
    clip = {("visual." + k.removeprefix("img_model.")) if k.startswith("img_model.") else k.removeprefix("text_model."):
            v for k, v in towers.items()}
    torch.save(clip, tmp_path / "clip.pt")
    assert main(["train", "--model", "tiny-fusioner", "--dataset", "pascal-5i", "--fold", "0", "--data-root", str(root),
                 "--splits", str(splits), "--clip-weights", str(tmp_path / "clip.pt"), "--iters", "1",
                 "--batch-size", "1", "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    trained = torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(trained[k], v) for k, v in towers.items())  # loaded, and frozen
