"""``cmpf eval``: id mapping (oracle = 100), JSON format, distributed merge, missing-dataset errors.

All on a tiny synthetic COCO-panoptic ``val2017`` split (``cmpf.data.synthetic``) laid out as the
registry's ``coco-panoptic-val``; the oracle maps category ids to class indices with its own table
(the synthetic classes' file order), independent of the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmpf.cli import main
from cmpf.data.registry import DatasetSpec
from cmpf.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_coco_panoptic
from cmpf.evaluation.dataset_eval import EvalConfig, evaluate
from cmpf.evaluation.gather import shard
from cmpf.evaluation.panoptic import read_panoptic_png
from cmpf.evaluation.prepare import Sample, prepare_dataset
from cmpf.postprocess import Segmentation

NUM_IMAGES = 5
SIZE = (40, 56)
FILE_ORDER = {c.id: i for i, c in enumerate(SYNTHETIC_CLASSES)}  # contiguous index = category file order
THINGS_BY_ID = sorted(c.id for c in SYNTHETIC_CLASSES if c.isthing)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """(datasets root with coco/…val2017, vocabulary dir)."""
    root = tmp_path_factory.mktemp("datasets")
    make_synthetic_coco_panoptic(root, NUM_IMAGES, SIZE, seed=3, split="val2017")
    vocab = tmp_path_factory.mktemp("vocab")
    lines = [f"{c.id}:{c.name}" for c in SYNTHETIC_CLASSES]
    (vocab / "coco_panoptic_with_prompt_eng.txt").write_text("\n".join(lines) + "\n")
    return root, vocab


def oracle_segmentation(sample: Sample, class_of=FILE_ORDER.__getitem__, *, noise: bool = False) -> Segmentation:
    """A Segmentation built from the ground truth; with ``noise``, deterministically damaged."""
    gt = read_panoptic_png(sample.panoptic_png)
    h, w = gt.shape
    k = len(SYNTHETIC_CLASSES)
    labels = np.zeros((h, w), dtype=np.int64)
    panoptic = np.zeros((h, w), dtype=np.int32)
    segments, scores, classes, masks = [], [], [], []
    thing_ids = {c.id for c in SYNTHETIC_CLASSES if c.isthing}
    for n, seg in enumerate(sample.segments_info):
        mask = gt == seg["id"]
        cls = class_of(seg["category_id"])
        if noise and (sample.index + n) % 4 == 1:  # a wrong class
            cls = (cls + 1) % k
        if noise and (sample.index + n) % 5 == 2:  # an eroded mask
            mask = mask & np.roll(mask, 3, axis=1)
        labels[mask] = cls
        if seg.get("iscrowd", 0) or not mask.any() or (noise and (sample.index + n) % 6 == 3):
            continue
        pid = len(segments) + 1
        panoptic[mask] = pid
        isthing = seg["category_id"] in thing_ids
        segments.append({"id": pid, "category_id": cls, "isthing": isthing, "area": int(mask.sum())})
        if isthing:
            scores.append(1.0 - 0.01 * n if not noise else 0.3 + 0.1 * ((sample.index * 7 + n) % 7))
            classes.append(cls)
            masks.append(mask)
    semantic = torch.nn.functional.one_hot(torch.from_numpy(labels), k).permute(2, 0, 1).float()
    return Segmentation(
        semantic=semantic,
        panoptic=torch.from_numpy(panoptic),
        segments=segments,
        instance_scores=torch.tensor(scores, dtype=torch.float32),
        instance_classes=torch.tensor(classes, dtype=torch.int64),
        instance_masks=torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), bool)),
    )


def oracle(image: torch.Tensor, sample: Sample) -> Segmentation:
    seg = oracle_segmentation(sample)
    assert tuple(image.shape[-2:]) == tuple(seg.panoptic.shape)
    return seg


def noisy_oracle(image: torch.Tensor, sample: Sample) -> Segmentation:
    return oracle_segmentation(sample, noise=True)


def _cfg(dataset, spec="coco-panoptic-val", **kw) -> EvalConfig:
    root, vocab = dataset
    return EvalConfig(dataset=spec, data_root=str(root), vocab_dir=str(vocab), progress=False, **kw)


def test_oracle_scores_100_on_every_task(dataset):
    report = evaluate(_cfg(dataset), predict=oracle)
    res = report.results
    assert res["panoptic"]["All"]["pq"] == pytest.approx(100.0)
    assert res["panoptic"]["Things"]["n"] > 0 and res["panoptic"]["Stuff"]["n"] > 0
    assert res["semantic"]["mIoU"] == pytest.approx(100.0)
    assert res["semantic"]["pACC"] == pytest.approx(100.0)
    assert res["instance"]["AP"] == pytest.approx(100.0)
    assert res["meta"]["num_images"] == NUM_IMAGES
    assert "PQ" in report.table and "mIoU" in report.table and "AP50" in report.table


def test_wrong_class_order_is_not_100(dataset):
    """The oracle in sorted-id order instead of file order must lose points: the mapping matters."""
    by_id = {cid: i for i, cid in enumerate(sorted(FILE_ORDER))}
    res = evaluate(_cfg(dataset), predict=lambda im, s: oracle_segmentation(s, by_id.__getitem__)).results
    assert res["panoptic"]["All"]["pq"] < 90 and res["semantic"]["mIoU"] < 90


def _with_panoptic_gt(dataset, sample: Sample) -> Sample:
    """Semantic- and instance-only samples carry no panoptic GT; the oracle borrows it (same image)."""
    full = {s.image_path: s for s in prepare_dataset("coco-panoptic-val", dataset[0], dataset[1]).samples}
    ref = full[sample.image_path]
    return Sample(sample.index, sample.image_path, sample.image_id, ref.panoptic_png, ref.segments_info)


def test_semantic_only_and_instance_only_specs(dataset):
    """Semantic-only listing (images ↔ label files by stem); instance-only (LVIS-like): contiguous index =
    rank of the instance JSON's category id; derived instances (Cityscapes-like) from the panoptic PNGs."""
    names = {c.id: c.name for c in SYNTHETIC_CLASSES}
    sem = DatasetSpec("syn-sem", "x", "coco/val2017", ("semantic",), class_names=tuple(names.values()),
                      semantic_dir="coco/panoptic_semseg_val2017")
    res = evaluate(_cfg(dataset, sem), predict=lambda im, s: oracle_segmentation(_with_panoptic_gt(dataset, s))).results
    assert set(res) == {"semantic", "meta"} and res["semantic"]["mIoU"] == pytest.approx(100.0)

    inst = DatasetSpec("syn-inst", "x", "coco/val2017", ("instance",),
                       class_names=tuple(names[i] for i in THINGS_BY_ID),
                       instances_json="coco/annotations/instances_val2017.json")
    sorted_rank = {cid: i for i, cid in enumerate(THINGS_BY_ID)}

    def inst_oracle(image, s):
        return oracle_segmentation(_with_panoptic_gt(dataset, s), lambda cid: sorted_rank.get(cid, 0))

    res = evaluate(_cfg(dataset, inst), predict=inst_oracle).results
    assert set(res) == {"instance", "meta"} and res["instance"]["AP"] == pytest.approx(100.0)

    derived = DatasetSpec("syn-derived", "x", "coco/val2017", ("instance",),
                          vocabulary="coco_panoptic_with_prompt_eng.txt", panoptic_dir="coco/panoptic_val2017",
                          panoptic_json="coco/annotations/panoptic_val2017.json")
    res = evaluate(_cfg(dataset, derived), predict=oracle).results
    assert res["instance"]["AP"] == pytest.approx(100.0) and res["meta"]["notes"]


def test_shards_cover_every_image_once():
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            covered = [i for r in range(world) for i in shard(n, r, world)]
            assert covered == list(range(n))


def _worker(rank: int, world: int, init_file: str, cfg: EvalConfig, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        report = evaluate(cfg, predict=noisy_oracle)
        if rank == 0:
            Path(out).write_text(json.dumps(report.results))
        else:
            assert report is None
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_one_process(dataset, tmp_path):
    cfg = _cfg(dataset)
    single = evaluate(cfg, predict=noisy_oracle).results
    assert 5 < single["panoptic"]["All"]["pq"] < 95 and 5 < single["semantic"]["mIoU"] < 95
    assert 5 < single["instance"]["AP"] < 95
    out = tmp_path / "two.json"
    torch.multiprocessing.spawn(_worker, args=(2, str(tmp_path / "init"), cfg, str(out)), nprocs=2, join=True)
    two = json.loads(out.read_text())
    assert two["meta"].pop("world_size") == 2 and single["meta"].pop("world_size") == 1
    assert two == json.loads(json.dumps(single))  # bit-identical after the JSON round trip


def test_cli_tiny_model_end_to_end(dataset, tmp_path, capsys):
    root, vocab = dataset
    out = tmp_path / "res" / "eval.json"
    rc = main(["eval", "--model", "tiny", "--dataset", "coco-panoptic-val", "--data-root", str(root),
               "--vocab-dir", str(vocab), "--out", str(out), "--limit", "1", "--min-size", "32", "--max-size", "64",
               "--no-progress"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Panoptic quality" in printed and "Semantic segmentation" in printed and "Instance segmentation" in printed
    res = json.loads(out.read_text())
    assert set(res) == {"panoptic", "semantic", "instance", "meta"}
    assert set(res["panoptic"]) == {"All", "Things", "Stuff", "per_class"}
    assert set(res["panoptic"]["per_class"]) == {str(c.id) for c in SYNTHETIC_CLASSES}
    assert {"mIoU", "fwIoU", "mACC", "pACC", "IoU", "ACC"} == set(res["semantic"])
    assert len(res["semantic"]["IoU"]) == len(SYNTHETIC_CLASSES)
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"} == set(res["instance"])
    assert set(res["instance"]["per_class"]) == {str(i) for i in THINGS_BY_ID}
    for value in (res["semantic"]["mIoU"], res["instance"]["AP"]):
        assert value is None or 0.0 <= value <= 100.0
    meta = res["meta"]
    assert meta["num_images"] == 1 and meta["model"] == "tiny" and meta["min_size_test"] == 32
    assert meta["train_vocab"].endswith("coco_panoptic_with_prompt_eng.txt")
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left nothing behind


@pytest.mark.parametrize("damage", ["no-data", "bad-json", "no-label", "no-png", "no-vocab"])
def test_missing_or_malformed_dataset_exits_2_naming_the_file(dataset, tmp_path, capsys, damage):
    root, vocab = dataset
    data = tmp_path / "data"
    make_synthetic_coco_panoptic(data, 2, 24, seed=0, split="val2017")
    expected = {
        "no-data": tmp_path / "empty" / "coco" / "annotations" / "panoptic_val2017.json",
        "bad-json": data / "coco" / "annotations" / "panoptic_val2017.json",
        "no-label": data / "coco" / "panoptic_semseg_val2017" / "000000000002.png",
        "no-png": data / "coco" / "panoptic_val2017" / "000000000002.png",
        "no-vocab": tmp_path / "novocab" / "coco_panoptic_with_prompt_eng.txt",
    }[damage]
    if damage == "bad-json":
        expected.write_text("{not json")
    elif damage in ("no-label", "no-png"):
        expected.unlink()
    elif damage == "no-vocab":
        (tmp_path / "novocab").mkdir()
    data_root = tmp_path / "empty" if damage == "no-data" else data
    vocab_dir = tmp_path / "novocab" if damage == "no-vocab" else vocab
    rc = main(["eval", "--model", "tiny", "--dataset", "coco-panoptic-val", "--data-root", str(data_root),
               "--vocab-dir", str(vocab_dir), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert str(expected) in err, err


def test_vocabulary_must_match_the_categories(dataset, tmp_path, capsys):
    root, _ = dataset
    vocab = tmp_path / "v"
    vocab.mkdir()
    (vocab / "coco_panoptic_with_prompt_eng.txt").write_text("cat\ndog\n")
    rc = main(["eval", "--model", "tiny", "--dataset", "coco-panoptic-val", "--data-root", str(root),
               "--vocab-dir", str(vocab)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "2 classes" in err and "7 categories" in err


def test_unknown_dataset_and_missing_model_exit_2(dataset, capsys):
    root, vocab = dataset
    assert main(["eval", "--model", "tiny", "--dataset", "nope", "--data-root", str(root)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert main(["eval", "--dataset", "coco-panoptic-val", "--data-root", str(root)]) == 2
    assert "--model" in capsys.readouterr().err

