"""PQ / SQ / RQ: hand-computed cases (void correction, IoU = 0.5 boundary, crowd), files and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cmpf.evaluation import MetricsInputError, PanopticAccumulator, evaluate_panoptic
from cmpf.cli import main as run_cli
from cmpf.evaluation.panoptic import id2rgb, read_panoptic_png, rgb2id

CATS = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 3, "name": "sky", "isthing": 0},
    {"id": 4, "name": "road", "isthing": 0},
]
# ids above 65535 exercise all three RGB channels
P1, P2, SKY = 70001, 300, 5
PR_A, PR_B, PR_SKY, PR_VOIDCAR, PR_CAR = 66000, 11, 12, 13, 14


def hand_case() -> tuple[np.ndarray, list, np.ndarray, list]:
    """10x10 image. GT: person P1 (rows 0-3, cols 0-4, 20 px), person P2 (rows 0-3, cols 5-9, 20 px),
    sky (rows 4-7, 40 px), VOID rows 8-9.

    Predictions:
      PR_A person: rows 0-3 cols 0-3 (16 px on P1) + row 8 cols 0-3 (4 px void), area 20.
          union = 20 + 20 - 16 - 4 (void) = 20 -> IoU 0.8 -> TP (0.667 without the void correction)
      PR_B person: rows 0-1 cols 5-9, 10 px on P2: IoU 10 / 20 = 0.5, not > 0.5 -> FP, and P2 -> FN
      PR_SKY sky: rows 4-7 cols 0-8, 36 px: IoU 36 / 40 = 0.9 -> TP
      PR_VOIDCAR car: row 9, all void -> ignored
      PR_CAR car: rows 2-3 cols 5-9 (on P2) -> FP
    person: PQ 0.8/2 = 0.4, SQ 0.8, RQ 0.5;  car: 0, 0, 0;  sky: 0.9, 0.9, 1;  road: no data.
    """
    gt = np.zeros((10, 10), np.int64)
    gt[0:4, 0:5], gt[0:4, 5:10], gt[4:8] = P1, P2, SKY
    gt_segs = [
        {"id": P1, "category_id": 1, "iscrowd": 0, "area": 20},
        {"id": P2, "category_id": 1, "iscrowd": 0, "area": 20},
        {"id": SKY, "category_id": 3, "iscrowd": 0, "area": 40},
    ]
    pred = np.zeros((10, 10), np.int64)
    pred[0:4, 0:4] = PR_A
    pred[8, 0:4] = PR_A
    pred[0:2, 5:10] = PR_B
    pred[4:8, 0:9] = PR_SKY
    pred[9, :] = PR_VOIDCAR
    pred[2:4, 5:10] = PR_CAR
    pred_segs = [
        {"id": PR_A, "category_id": 1},
        {"id": PR_B, "category_id": 1},
        {"id": PR_SKY, "category_id": 3},
        {"id": PR_VOIDCAR, "category_id": 2},
        {"id": PR_CAR, "category_id": 2},
    ]
    return gt, gt_segs, pred, pred_segs


def check_hand_result(r: dict) -> None:
    approx = lambda v: pytest.approx(v, abs=1e-9)  # noqa: E731
    assert r["per_class"]["1"] == {"pq": approx(40.0), "sq": approx(80.0), "rq": approx(50.0)}
    assert r["per_class"]["2"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert r["per_class"]["3"] == {"pq": approx(90.0), "sq": approx(90.0), "rq": approx(100.0)}
    assert r["per_class"]["4"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # no data: 0, as panopticapi
    assert r["All"] == {"pq": approx(130 / 3), "sq": approx(170 / 3), "rq": approx(50.0), "n": 3}
    assert r["Things"] == {"pq": approx(20.0), "sq": approx(40.0), "rq": approx(25.0), "n": 2}
    assert r["Stuff"] == {"pq": approx(90.0), "sq": approx(90.0), "rq": approx(100.0), "n": 1}


def test_hand_computed_case() -> None:
    acc = PanopticAccumulator(CATS)
    acc.add(*hand_case())
    check_hand_result(acc.result())
    iou, tp, fp, fn = acc.counts()[1]
    assert (tp, fp, fn) == (1, 1, 1) and iou == pytest.approx(0.8)


def test_add_counts_merges_accumulators() -> None:
    """Per-image accumulators merged with ``add_counts`` equal one accumulator over both images."""
    gt, gt_segs, pred, pred_segs = hand_case()
    perfect = (gt, gt_segs, gt, [{"id": s["id"], "category_id": s["category_id"]} for s in gt_segs])
    whole = PanopticAccumulator(CATS)
    whole.add(gt, gt_segs, pred, pred_segs)
    whole.add(*perfect)
    first, second = PanopticAccumulator(CATS), PanopticAccumulator(CATS)
    first.add(gt, gt_segs, pred, pred_segs)
    second.add(*perfect)
    merged = PanopticAccumulator(CATS)
    merged.add_counts(first.counts(), first.num_images)
    merged.add_counts(second.counts(), second.num_images)
    assert merged.counts() == whole.counts() and merged.num_images == 2
    iou, tp, fp, fn = merged.counts()[1]
    assert (tp, fp, fn) == (1 + 2, 1, 1) and iou == pytest.approx(0.8 + 2.0)
    assert merged.result() == whole.result()


def test_perfect_and_empty_prediction() -> None:
    gt, gt_segs, _, _ = hand_case()
    perfect = PanopticAccumulator(CATS)
    perfect.add(gt, gt_segs, gt, [{"id": s["id"], "category_id": s["category_id"]} for s in gt_segs])
    r = perfect.result()
    assert r["All"] == {"pq": 100.0, "sq": 100.0, "rq": 100.0, "n": 2}
    assert r["Things"]["n"] == 1 and r["Stuff"]["n"] == 1

    empty = PanopticAccumulator(CATS)
    empty.add(gt, gt_segs, np.zeros_like(gt), [])
    r = empty.result()
    assert r["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}  # person and sky: FN only


def test_group_without_categories_is_none() -> None:
    acc = PanopticAccumulator(CATS)
    gt = np.full((4, 4), 9)
    acc.add(gt, [{"id": 9, "category_id": 3, "iscrowd": 0, "area": 16}], gt, [{"id": 9, "category_id": 3}])
    r = acc.result()
    assert r["Things"] == {"pq": None, "sq": None, "rq": None, "n": 0}
    assert r["Stuff"]["pq"] == 100.0


def test_crowd_and_void_rules() -> None:
    """GT: person crowd (rows 0-4, 50 px), car (row 9, 10 px), VOID rows 5-8. Predictions, 10 px each:
    a: person, 6 px on the person crowd + 4 px void: 10/10 > 0.5 -> ignored
    b: person, 5 px on the person crowd + 5 px on the car GT: 5/10 = 0.5, not > 0.5 -> FP
    c: car, 10 px on the person crowd: a crowd of another class does not count -> FP
    d: car, 6 px void + 4 px on the car GT: IoU 4 / (10 + 10 - 4 - 6) = 0.4, no match; 0.6 void -> ignored
    The crowd segment is neither matched nor a FN; the car GT is a FN.
    """
    gt = np.zeros((10, 10), np.int64)
    gt[0:5] = 1  # crowd person
    gt[9] = 2  # car
    gt_segs = [
        {"id": 1, "category_id": 1, "iscrowd": 1, "area": 50},
        {"id": 2, "category_id": 2, "iscrowd": 0, "area": 10},
    ]
    pred = np.zeros((10, 10), np.int64)
    pred[0, 0:6], pred[5, 0:4] = 21, 21  # a: 6 crowd + 4 void
    pred[1, 0:5], pred[9, 0:5] = 22, 22  # b: 5 crowd + 5 car-gt
    pred[2] = 23  # c: 10 on crowd, other class
    pred[6, 0:6], pred[9, 5:9] = 24, 24  # d: 6 void + 4 car-gt (IoU 4/10 with car: no match)
    pred_segs = [
        {"id": 21, "category_id": 1},
        {"id": 22, "category_id": 1},
        {"id": 23, "category_id": 2},
        {"id": 24, "category_id": 2},
    ]
    acc = PanopticAccumulator(CATS)
    acc.add(gt, gt_segs, pred, pred_segs)
    counts = acc.counts()
    assert counts[1][1:] == (0, 1, 0)  # person: only b is a FP; the crowd is no FN
    assert counts[2][1:] == (0, 1, 1)  # car: c is a FP, d ignored, the car GT is a FN


def test_crowd_gt_is_never_matched() -> None:
    gt = np.ones((4, 4), np.int64)
    acc = PanopticAccumulator(CATS)
    acc.add(gt, [{"id": 1, "category_id": 1, "iscrowd": 1, "area": 16}], gt, [{"id": 1, "category_id": 1}])
    assert acc.counts().get(1, (0.0, 0, 0, 0)) == (0.0, 0, 0, 0)  # ignored: no TP, no FP
    assert acc.result()["All"]["n"] == 0


@pytest.mark.parametrize(
    "pred_segs, message",
    [
        ([{"id": 7, "category_id": 99}], "unknown category_id 99"),
        ([], "presented in PNG and not presented in JSON"),
        ([{"id": 7, "category_id": 1}, {"id": 8, "category_id": 1}], "[8] are presented in JSON"),
    ],
)
def test_prediction_sanity_errors(pred_segs: list, message: str) -> None:
    gt = np.full((3, 3), 5)
    pred = np.full((3, 3), 7)
    acc = PanopticAccumulator(CATS)
    with pytest.raises(MetricsInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        acc.add(gt, [{"id": 5, "category_id": 1, "iscrowd": 0, "area": 9}], pred, pred_segs, image_id=3)


def test_rgb_id_roundtrip(tmp_path) -> None:
    ids = np.array([[0, 1, 255, 256], [70001, 65536, 16777215, 300]])
    assert np.array_equal(rgb2id(id2rgb(ids)), ids)
    Image.fromarray(id2rgb(ids)).save(tmp_path / "a.png")
    assert np.array_equal(read_panoptic_png(tmp_path / "a.png"), ids)


def write_dataset(root, pred_as_list: bool = False) -> dict:
    gt, gt_segs, pred, pred_segs = hand_case()
    (root / "gt").mkdir()
    (root / "pred").mkdir()
    Image.fromarray(id2rgb(gt)).save(root / "gt" / "img1.png")
    Image.fromarray(id2rgb(pred)).save(root / "pred" / "img1_pred.png")
    gt_json = {"annotations": [{"image_id": 1, "file_name": "img1.png", "segments_info": gt_segs}], "categories": CATS}
    pred_anns = [{"image_id": 1, "file_name": "img1_pred.png", "segments_info": pred_segs}]
    (root / "gt.json").write_text(json.dumps(gt_json))
    (root / "pred.json").write_text(json.dumps(pred_anns if pred_as_list else {"annotations": pred_anns}))
    return {"gt_json": root / "gt.json", "gt_dir": root / "gt", "pred_json": root / "pred.json", "pred_dir": root / "pred"}


@pytest.mark.parametrize("pred_as_list", [False, True])
def test_evaluate_panoptic_files(tmp_path, pred_as_list: bool) -> None:
    paths = write_dataset(tmp_path, pred_as_list)
    check_hand_result(evaluate_panoptic(**paths))




def cli_argv(paths: dict) -> list[str]:
    return ["metrics", "panoptic", "--gt-json", str(paths["gt_json"]), "--gt-dir", str(paths["gt_dir"]),
            "--pred-json", str(paths["pred_json"]), "--pred-dir", str(paths["pred_dir"]), "--no-progress"]


def test_cli_writes_json(tmp_path, capsys) -> None:
    paths = write_dataset(tmp_path)
    out = tmp_path / "res" / "pq.json"
    assert run_cli(cli_argv(paths) + ["--out", str(out)]) == 0
    assert "person" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert set(data) == {"All", "Things", "Stuff", "per_class"}
    assert set(data["per_class"]) == {"1", "2", "3", "4"}
    check_hand_result(data)
    assert [p.name for p in out.parent.iterdir()] == ["pq.json"]  # no temp file left


def test_cli_errors(tmp_path, capsys) -> None:
    paths = write_dataset(tmp_path)
    missing = dict(paths, pred_json=tmp_path / "nope.json")
    assert run_cli(cli_argv(missing)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope.json" in err and err.count("\n") == 1

    (tmp_path / "bad.json").write_text("{not json")
    assert run_cli(cli_argv(dict(paths, gt_json=tmp_path / "bad.json"))) == 2
    assert "bad.json" in capsys.readouterr().err

    (tmp_path / "pred" / "img1_pred.png").unlink()
    assert run_cli(cli_argv(paths)) == 2
    assert "img1_pred.png" in capsys.readouterr().err

    (tmp_path / "pred.json").write_text(json.dumps([]))
    assert run_cli(cli_argv(paths)) == 2
    assert "no prediction for the image with id: 1" in capsys.readouterr().err
