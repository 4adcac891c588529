"""mIoU / fwIoU / mACC / pACC: a hand-computed confusion, ignore handling, files, JSON and CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cmpf.evaluation import MetricsInputError, SemanticAccumulator, evaluate_semantic
from cmpf.cli import main as run_cli

# (gt, pred) pixels: (0,0) (0,1) (1,1) (1,1) | (2,2) (2,0) (255,2) (1,3)
GT = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
PRED = np.array([[0, 1, 1, 1], [2, 0, 2, 3]])


def test_hand_computed_confusion() -> None:
    """N = 4, class 3 is predicted once but never in the GT.

    tp = [1, 2, 1, 0], pos_gt = [2, 3, 2, 0], pos_pred = [2, 3, 1, 1] (the pixel on 255 counts nowhere)
    IoU = [1/3, 2/4, 1/2, undefined], ACC = [1/2, 2/3, 1/2, undefined]
    mIoU = (1/3 + 1/2 + 1/2) / 3, fwIoU = (2/3 + 3/2 + 2/2) / 7, mACC = (1/2 + 2/3 + 1/2) / 3, pACC = 4/7
    """
    acc = SemanticAccumulator(4, ignore_label=255)
    acc.add(GT, PRED)
    r = acc.result()
    assert r["IoU"] == {"0": pytest.approx(100 / 3), "1": 50.0, "2": 50.0, "3": None}
    assert r["ACC"] == {"0": 50.0, "1": pytest.approx(200 / 3), "2": 50.0, "3": None}
    assert r["mIoU"] == pytest.approx(100 * (4 / 3) / 3)
    assert r["fwIoU"] == pytest.approx(100 * (2 / 3 + 1.5 + 1.0) / 7)
    assert r["mACC"] == pytest.approx(100 * (5 / 3) / 3)
    assert r["pACC"] == pytest.approx(400 / 7)
    # rows = prediction, columns = GT; the ignored pixel lands in column N
    assert acc.conf_matrix[2, 4] == 1 and acc.conf_matrix[3, 1] == 1 and acc.conf_matrix.sum() == 8


def test_accumulates_over_images_and_custom_ignore() -> None:
    acc = SemanticAccumulator(3, ignore_label=7)
    acc.add(np.array([[0, 1]]), np.array([[0, 1]]))
    acc.add(np.array([[2, 7]]), np.array([[1, 2]]))
    r = acc.result()
    # tp = [1, 1, 0], pos_gt = [1, 1, 1], pos_pred = [1, 2, 0]
    assert r["IoU"] == {"0": 100.0, "1": 50.0, "2": 0.0}
    assert r["pACC"] == pytest.approx(200 / 3)


def test_perfect_and_empty() -> None:
    gt = np.array([[0, 1, 2], [2, 255, 0]])
    perfect = SemanticAccumulator(3)
    perfect.add(gt, np.where(gt == 255, 0, gt))
    r = perfect.result()
    assert (r["mIoU"], r["fwIoU"], r["mACC"], r["pACC"]) == (100.0, 100.0, 100.0, 100.0)

    nothing = SemanticAccumulator(3)
    r = nothing.result()
    assert r["mIoU"] is None and r["mACC"] is None and r["pACC"] is None
    assert r["IoU"] == {"0": None, "1": None, "2": None}


@pytest.mark.parametrize(
    "gt, pred, message",
    [
        (np.array([[0, 4]]), np.array([[0, 1]]), "ground-truth label 4"),
        (np.array([[0, 1]]), np.array([[0, 3]]), "predicted label 3"),
        (np.array([[0, 1]]), np.array([[0, 255]]), "predicted label 255"),
        (np.array([[0, 1]]), np.array([[0], [1]]), "differ"),
    ],
)
def test_bad_labels(gt: np.ndarray, pred: np.ndarray, message: str) -> None:
    with pytest.raises(MetricsInputError, match=message):
        SemanticAccumulator(3).add(gt, pred)


def write_pngs(root) -> tuple:
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    Image.fromarray(GT[:, :2].astype(np.uint8)).save(gt_dir / "a.png")
    Image.fromarray(GT[:, 2:].astype(np.uint8)).save(gt_dir / "b.png")
    Image.fromarray(PRED[:, :2].astype(np.uint8)).save(pred_dir / "a.png")
    Image.fromarray(PRED[:, 2:].astype(np.uint8)).save(pred_dir / "b.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(pred_dir / "extra.png")  # ignored
    return gt_dir, pred_dir


def test_evaluate_semantic_files(tmp_path) -> None:
    gt_dir, pred_dir = write_pngs(tmp_path)
    r = evaluate_semantic(gt_dir, pred_dir, num_classes=4)
    assert r["mIoU"] == pytest.approx(100 * (4 / 3) / 3)
    assert r["IoU"]["3"] is None




def test_cli_json_and_errors(tmp_path, capsys) -> None:
    gt_dir, pred_dir = write_pngs(tmp_path)
    base = ["metrics", "semantic", "--gt-dir", str(gt_dir), "--pred-dir", str(pred_dir), "--no-progress"]
    out = tmp_path / "sem.json"
    assert run_cli(base + ["--num-classes", "4", "--out", str(out)]) == 0
    text = out.read_text()
    data = json.loads(text)
    assert set(data) == {"mIoU", "fwIoU", "mACC", "pACC", "IoU", "ACC"}
    assert data["IoU"]["3"] is None and '"3": null' in text
    assert data["pACC"] == pytest.approx(400 / 7)
    capsys.readouterr()

    assert run_cli(base + ["--num-classes", "3"]) == 2  # label 3 in a prediction
    err = capsys.readouterr().err
    assert err.startswith("error:") and "predicted label 3" in err and "'b'" in err

    assert run_cli(base[:3] + [str(tmp_path / "missing"), *base[4:], "--num-classes", "4"]) == 2
    assert "missing" in capsys.readouterr().err

    (pred_dir / "b.png").unlink()
    assert run_cli(base + ["--num-classes", "4"]) == 2
    assert "b.png" in capsys.readouterr().err
