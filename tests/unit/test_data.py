"""COCO-panoptic reader, LSJ, synthetic generator and dataset registry (CPU, synthetic data)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cmpf.data import (
    DATASETS,
    CocoPanopticDataset,
    DatasetSpec,
    LargeScaleJitter,
    LSJConfig,
    check_dataset,
    collate_panoptic,
    id2rgb,
    load_coco_panoptic_json,
    make_synthetic_coco_panoptic,
    rgb2id,
)
from cmpf.data.coco_panoptic import read_rgb
from cmpf.data.synthetic import SYNTHETIC_CLASSES
from cmpf.data.transforms import fixed_size_crop_offset, resize_scale_size

NUM_IMAGES = 7


@pytest.fixture(scope="module")
def synthetic_png(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn_png")
    return make_synthetic_coco_panoptic(root, NUM_IMAGES, (48, 64), seed=3, image_format="png", split="val2017")


@pytest.fixture(scope="module")
def synthetic_jpg(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn_jpg")
    return make_synthetic_coco_panoptic(root, 4, 40, seed=1, split="val2017")


def test_rgb_id_round_trip():
    ids = np.array([[0, 1, 255], [256, 65536, 2**24 - 1]])
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 1])
    np.testing.assert_array_equal(rgb2id(rgb), ids)


def test_synthetic_is_deterministic(tmp_path, synthetic_png):
    again = make_synthetic_coco_panoptic(tmp_path, NUM_IMAGES, (48, 64), seed=3, image_format="png", split="val2017")
    assert again.json_path.read_bytes() == synthetic_png.json_path.read_bytes()
    for name in ("000000000001.png", "000000000005.png"):
        assert (again.image_dir / name).read_bytes() == (synthetic_png.image_dir / name).read_bytes()
        assert (again.panoptic_dir / name).read_bytes() == (synthetic_png.panoptic_dir / name).read_bytes()
    other = make_synthetic_coco_panoptic(tmp_path / "other", NUM_IMAGES, (48, 64), seed=4, image_format="png")
    assert other.json_path.read_bytes() != synthetic_png.json_path.read_bytes()


def test_synthetic_contents(synthetic_png):
    info = json.loads(synthetic_png.json_path.read_text())
    assert [c["id"] for c in info["categories"]] == [c.id for c in SYNTHETIC_CLASSES]
    assert {c["isthing"] for c in info["categories"]} == {0, 1}
    segments = [s for a in info["annotations"] for s in a["segments_info"]]
    assert any(s["iscrowd"] for s in segments) and not all(s["iscrowd"] for s in segments)
    assert all(s["iscrowd"] for s in info["annotations"][-1]["segments_info"])  # the crowd-only image
    ids = rgb2id(read_rgb(synthetic_png.panoptic_dir / info["annotations"][0]["file_name"]))
    assert (ids == 0).any(), "image 0 has a void strip"
    assert set(np.unique(ids)) - {0} == {s["id"] for s in info["annotations"][0]["segments_info"]}
    semantic = np.asarray(Image.open(synthetic_png.semantic_dir / info["annotations"][0]["file_name"]))
    assert (semantic[ids == 0] == 255).all() and (semantic[ids != 0] < len(SYNTHETIC_CLASSES)).all()
    from pycocotools import mask as mask_utils

    instances = json.loads(synthetic_png.instances_json.read_text())
    things = {c.id for c in SYNTHETIC_CLASSES if c.isthing}
    assert len(instances["annotations"]) == sum(s["category_id"] in things for s in segments)
    first = instances["annotations"][0]
    thing_id = next(s["id"] for s in info["annotations"][0]["segments_info"] if s["category_id"] in things)
    np.testing.assert_array_equal(mask_utils.decode(first["segmentation"]).astype(bool), ids == thing_id)


def test_reader_drops_crowd_filters_empty_and_maps_ids(synthetic_png):
    s = synthetic_png
    records, cats = load_coco_panoptic_json(s.json_path, s.image_dir, s.panoptic_dir)
    raw, _ = load_coco_panoptic_json(s.json_path, s.image_dir, s.panoptic_dir, drop_crowd=False, filter_empty=False)
    assert len(raw) == NUM_IMAGES and len(records) == NUM_IMAGES - 1  # the crowd-only image is gone
    assert any(seg.iscrowd for r in raw for seg in r.segments)
    assert not any(seg.iscrowd for r in records for seg in r.segments)
    assert cats.names == tuple(c.name for c in SYNTHETIC_CLASSES)
    assert cats.id_to_index == {c.id: i for i, c in enumerate(SYNTHETIC_CLASSES)}  # JSON order, not id order
    info = json.loads(s.json_path.read_text())
    by_id = {seg["id"]: seg["category_id"] for a in info["annotations"] for seg in a["segments_info"]}
    for record in records:
        for seg in record.segments:
            assert cats.ids[seg.label] == by_id[seg.id]


def test_dataset_items(synthetic_png):
    s = synthetic_png
    ds = CocoPanopticDataset.from_files(s.json_path, s.image_dir, s.panoptic_dir)
    assert len(ds) == NUM_IMAGES - 1
    for i in range(len(ds)):
        item = ds[i]
        image, labels, masks = item["image"], item["labels"], item["masks"]
        assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
        assert labels.dtype == torch.int64 and masks.dtype == torch.bool
        assert masks.shape == (len(labels), 48, 64) and len(labels) > 0
        assert masks.sum(0).max() <= 1, "segments do not overlap"
        ids = rgb2id(read_rgb(ds.records[i].panoptic_path))
        for seg, mask in zip(ds.records[i].segments, masks):
            np.testing.assert_array_equal(mask.numpy(), ids == seg.id)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), read_rgb(ds.records[i].image_path))


def test_lsj_size_rules():
    # detectron2 ResizeScale: output scale = min(r*S/h, r*S/w), sizes rounded
    assert resize_scale_size(60, 80, 0.5, 64) == (24, 32)
    assert resize_scale_size(100, 50, 2.0, 64) == (128, 64)
    assert fixed_size_crop_offset(100, 64, 64, 0.5) == (18, 0)
    assert fixed_size_crop_offset(30, 20, 64, 0.9) == (0, 0)


def test_lsj_pads_image_128_and_segmentation_255():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    pan = id2rgb(np.full((60, 80), 7))
    lsj = LargeScaleJitter(LSJConfig(image_size=64, min_scale=0.5, max_scale=0.5))
    out_image, out_pan = lsj(image, pan, rng)
    assert out_image.shape == (64, 64, 3) and out_pan.shape == (64, 64, 3)
    assert (out_image[24:] == 128).all() and (out_image[:, 32:] == 128).all()
    assert (out_pan[24:] == 255).all() and (out_pan[:, 32:] == 255).all()
    assert (rgb2id(out_pan[:24, :32]) == 7).all()
    assert rgb2id(out_pan[30:31, 40:41])[0, 0] == 2**24 - 1  # names no segment: masks are False there


def test_lsj_flip_and_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    pan = id2rgb(np.arange(64 * 64).reshape(64, 64) + 1)
    flip = LargeScaleJitter(LSJConfig(image_size=64, min_scale=1.0, max_scale=1.0, flip_prob=1.0))
    out_image, out_pan = flip(image, pan, rng)
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_pan, pan[:, ::-1])
    big = LargeScaleJitter(LSJConfig(image_size=32, min_scale=2.0, max_scale=2.0, flip_prob=0.0))
    out_image, out_pan = big(image, pan, np.random.default_rng(5))
    ids = rgb2id(out_pan)
    assert out_image.shape == (32, 32, 3) and (ids > 0).all() and (ids < 2**24 - 1).all()
    # resized to 64x64 (scale 2 of a 32 target = identity here), so the crop is a window of the input
    y0, x0 = divmod(int(ids[0, 0]) - 1, 64)
    np.testing.assert_array_equal(ids, np.arange(64 * 64).reshape(64, 64)[y0 : y0 + 32, x0 : x0 + 32] + 1)


def test_augmented_dataset_is_seeded_and_collates(synthetic_png):
    s = synthetic_png
    ds = CocoPanopticDataset.from_files(s.json_path, s.image_dir, s.panoptic_dir, LargeScaleJitter(LSJConfig(64)))
    a, b, c = ds[(2, 11)], ds[(2, 11)], ds[(2, 12)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"])
    assert a["image"].shape == (3, 64, 64) and a["masks"].shape[1:] == (64, 64)
    assert not torch.equal(a["image"], c["image"])
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_panoptic)
    images, targets = next(iter(loader))
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.uint8 and len(targets) == 3
    assert set(targets[0]) == {"labels", "masks", "image_id"}
    with pytest.raises(ValueError, match="same-size"):
        collate_panoptic([ds[0], {**ds[0], "image": torch.zeros(3, 8, 8, dtype=torch.uint8)}])


def test_registry_contents():
    for name in ("coco-panoptic-val", "ade20k-150", "ade20k-847", "pascal-context-59", "pascal-context-459",
                 "pascal-voc-20", "pascal-voc-21", "cityscapes", "mapillary-vistas", "bdd-panoptic",
                 "bdd-semantic", "lvis"):  # fmt: skip
        spec = DATASETS[name]
        assert spec.name == name
        assert spec.vocabulary is None or spec.vocabulary.endswith("_with_prompt_eng.txt")
    assert DATASETS["ade20k-150"].vocabulary == "ade20k_150_with_prompt_eng.txt"
    for name in ("cityscapes", "mapillary-vistas"):
        assert (DATASETS[name].min_size_test, DATASETS[name].max_size_test) == (1024, 2560)
    assert (DATASETS["coco-panoptic-val"].min_size_test, DATASETS["coco-panoptic-val"].max_size_test) == (800, 1333)
    assert DATASETS["bdd-panoptic"].object_mask_threshold == 0.4
    assert DATASETS["ade20k-150"].object_mask_threshold == 0.0
    assert set(DATASETS["ade20k-150"].tasks) == {"semantic", "instance", "panoptic"}
    assert set(DATASETS["mapillary-vistas"].tasks) == {"semantic", "panoptic"}
    assert DATASETS["lvis"].tasks == ("instance",) and DATASETS["bdd-panoptic"].tasks == ("panoptic",)
    assert DATASETS["pascal-context-459"].tasks == ("semantic",)
    assert len(DATASETS["bdd-semantic"].class_names) == 19 and len(DATASETS["bdd-panoptic"].class_names) == 40
    assert DATASETS["pascal-voc-20"].vocabulary_skip == 1
    with pytest.raises(ValueError, match="exactly one"):
        DatasetSpec("x", "x", "img", ("semantic",), vocabulary="a.txt", class_names=("a",), semantic_dir="s")
    with pytest.raises(ValueError, match="panoptic"):
        DatasetSpec("x", "x", "img", ("panoptic",), vocabulary="a.txt")


def test_check_dataset_ok(synthetic_jpg, tmp_path):
    paths = check_dataset(DATASETS["coco-panoptic-val"], synthetic_jpg.root)
    assert paths["panoptic_json"] == synthetic_jpg.json_path.resolve()
    assert paths["instances_json"] == synthetic_jpg.instances_json.resolve()
    assert all(p.is_absolute() for p in paths.values())
    (tmp_path / "coco_panoptic_with_prompt_eng.txt").write_text("1:red box\n")
    paths = check_dataset(DATASETS["coco-panoptic-val"], synthetic_jpg.root, ("panoptic",), vocabulary_dir=tmp_path)
    assert "semantic_dir" not in paths and paths["vocabulary"].name == "coco_panoptic_with_prompt_eng.txt"


def test_check_dataset_errors(synthetic_jpg, tmp_path, monkeypatch):
    spec = DATASETS["coco-panoptic-val"]
    root = tmp_path / "root"
    shutil.copytree(synthetic_jpg.root, root)
    monkeypatch.delenv("CMPF_DATASETS", raising=False)
    with pytest.raises(ValueError, match="CMPF_DATASETS"):
        check_dataset(spec)
    monkeypatch.setenv("CMPF_DATASETS", str(root))
    assert check_dataset(spec)["image_dir"] == (root / "coco/val2017").resolve()
    with pytest.raises(FileNotFoundError, match="ade20k_panoptic_val.json"):
        check_dataset(DATASETS["ade20k-150"], root)
    with pytest.raises(ValueError, match="does not evaluate"):
        check_dataset(DATASETS["lvis"], root, ("panoptic",))
    with pytest.raises(FileNotFoundError, match="vocabulary file .*coco_panoptic_with_prompt_eng.txt"):
        check_dataset(spec, root, vocabulary_dir=tmp_path)
    (root / "coco/annotations/instances_val2017.json").write_text("{not json")
    with pytest.raises(ValueError, match="instances_val2017.json is not valid JSON"):
        check_dataset(spec, root)
    (root / "coco/annotations/instances_val2017.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="malformed.*annotations"):
        check_dataset(spec, root)
    shutil.rmtree(root / "coco/panoptic_semseg_val2017")
    with pytest.raises(FileNotFoundError, match="semantic label directory .*panoptic_semseg_val2017"):
        check_dataset(spec, root, ("semantic",))
    (root / "coco/panoptic_val2017/000000000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"panoptic PNG .*000000000001.png"):
        check_dataset(spec, root, ("panoptic",))
    for p in (root / "coco/val2017").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=r"val2017 has no '\*.jpg' file"):
        check_dataset(spec, root, ("panoptic",))
