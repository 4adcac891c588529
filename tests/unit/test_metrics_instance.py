"""COCO segm AP: a hand-computed case, agreement with a direct pycocotools run, JSON and CLI errors."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cmpf.evaluation import MetricsInputError, evaluate_instance, evaluate_instance_dicts
from cmpf.cli import main as run_cli

H = W = 64
CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]


def rle(mask: np.ndarray) -> dict:
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def gt_ann(ann_id: int, image_id: int, cat: int, mask: np.ndarray, iscrowd: int = 0) -> dict:
    bbox = [float(v) for v in mask_util.toBbox(rle(mask))]
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": rle(mask),
            "area": float(mask.sum()), "bbox": bbox, "iscrowd": iscrowd}


def hand_case() -> tuple[dict, list]:
    """cat: one small GT (100 px); a FP (score 0.9) then a TP with IoU 78/100 (score 0.8).
    For the 6 IoU thresholds 0.50..0.75 the precision envelope is 0.5 at every recall, above 0 -> AP 30.
    dog: one medium GT (1600 px) found exactly -> AP 100. bird: no GT -> undefined.
    """
    cat_gt = box(0, 10, 0, 10)
    cat_tp = box(0, 7, 0, 10) | box(7, 8, 0, 8)  # 78 px inside the GT
    dog_gt = box(20, 60, 20, 60)
    gt = {
        "images": [{"id": 1, "height": H, "width": W, "file_name": "1.jpg"},
                   {"id": 2, "height": H, "width": W, "file_name": "2.jpg"}],
        "annotations": [gt_ann(1, 1, 1, cat_gt), gt_ann(2, 2, 2, dog_gt)],
        "categories": CATS,
    }
    preds = [
        {"image_id": 1, "category_id": 1, "segmentation": rle(box(50, 60, 50, 60)), "score": 0.9},
        {"image_id": 1, "category_id": 1, "segmentation": rle(cat_tp), "score": 0.8},
        {"image_id": 2, "category_id": 2, "segmentation": rle(dog_gt), "score": 0.7},
    ]
    return gt, preds


def test_hand_computed_ap() -> None:
    r = evaluate_instance_dicts(*hand_case())
    assert r["per_class"] == {"1": pytest.approx(30.0), "2": pytest.approx(100.0), "3": None}
    assert r["AP"] == pytest.approx(65.0)
    assert r["AP50"] == pytest.approx(75.0)
    assert r["AP75"] == pytest.approx(75.0)
    assert r["APs"] == pytest.approx(30.0)  # only the cat is small
    assert r["APm"] == pytest.approx(100.0)  # only the dog is medium
    assert r["APl"] is None  # nothing large


def test_bbox_of_results_is_ignored() -> None:
    """detectron2 drops ``bbox``: with it pycocotools would take the box area (4096, medium)."""
    gt, preds = hand_case()
    for p in preds:
        p["bbox"] = [0.0, 0.0, 64.0, 64.0]
    r = evaluate_instance_dicts(gt, preds)
    assert r["APs"] == pytest.approx(30.0) and r["APl"] is None
    assert "bbox" in preds[0]  # caller's dicts untouched


def test_perfect_and_empty() -> None:
    gt, _ = hand_case()
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                "score": 1.0} for a in gt["annotations"]]
    r = evaluate_instance_dicts(gt, perfect)
    assert r["AP"] == pytest.approx(100.0) and r["per_class"]["3"] is None
    r = evaluate_instance_dicts(gt, [])
    assert r["AP"] == 0.0 and r["per_class"] == {"1": 0.0, "2": 0.0, "3": None}


def random_set(seed: int) -> tuple[dict, list]:
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []
    for img in range(1, 7):
        images.append({"id": img, "height": H, "width": W, "file_name": f"{img}.jpg"})
        for _ in range(int(rng.integers(1, 5))):
            y, x = rng.integers(0, H - 8, 2)
            h, w = rng.integers(3, H - max(y, x) + 1, 2)
            m = box(y, y + h, x, x + w)
            anns.append(gt_ann(len(anns) + 1, img, int(rng.integers(1, 3)), m, int(rng.random() < 0.1)))
            for _ in range(int(rng.integers(0, 3))):
                dy, dx = rng.integers(-4, 5, 2)
                pm = np.roll(m, (dy, dx), axis=(0, 1)) & (rng.random((H, W)) < 0.95)
                cat = anns[-1]["category_id"] if rng.random() < 0.8 else int(rng.integers(1, 3))
                preds.append({"image_id": img, "category_id": cat, "segmentation": rle(pm),
                              "score": float(rng.random())})
    return {"images": images, "annotations": anns, "categories": CATS}, preds


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_direct_pycocotools(seed: int) -> None:
    gt, preds = random_set(seed)
    r = evaluate_instance_dicts(gt, preds)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(preds))), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for i, k in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
        expected = 100 * ev.stats[i] if ev.stats[i] >= 0 else None
        assert r[k] == (pytest.approx(expected) if expected is not None else None), k
    defined = [v for v in r["per_class"].values() if v is not None]
    assert r["per_class"]["3"] is None and len(defined) == 2
    assert r["AP"] == pytest.approx(np.mean(defined))  # every defined class has T x R entries
    assert 0 < r["AP"] < 100


def test_bad_predictions() -> None:
    gt, preds = hand_case()
    with pytest.raises(MetricsInputError, match="image ids not in the ground truth"):
        evaluate_instance_dicts(gt, [dict(preds[0], image_id=99)])
    with pytest.raises(MetricsInputError, match="score"):
        evaluate_instance_dicts(gt, [{k: v for k, v in preds[0].items() if k != "score"}])




def test_files_cli_json_and_errors(tmp_path, capsys) -> None:
    gt, preds = hand_case()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    assert evaluate_instance(tmp_path / "gt.json", tmp_path / "pred.json")["AP"] == pytest.approx(65.0)

    base = ["metrics", "instance", "--gt-json", str(tmp_path / "gt.json")]
    out = tmp_path / "ap.json"
    assert run_cli(base + ["--pred-json", str(tmp_path / "pred.json"), "--out", str(out)]) == 0
    assert "dog" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert set(data) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}
    assert data["APl"] is None and data["per_class"]["3"] is None
    assert data["per_class"]["1"] == pytest.approx(30.0)

    (tmp_path / "bad.json").write_text('[{"image_id": 1,')
    assert run_cli(base + ["--pred-json", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "bad.json" in err
    assert run_cli(base + ["--pred-json", str(tmp_path / "absent.json")]) == 2
    assert "absent.json" in capsys.readouterr().err
