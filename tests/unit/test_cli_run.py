import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cmpf.cli import main
from cmpf.codecs import mask_bbox, rgb2id


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (70, 90, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from cmpf.model import build_model

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.manual_seed(3)
    torch.save({"model": build_model("tiny").state_dict()}, path)
    return path


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "doctor", "metrics"):
        assert cmd in out


def test_doctor(capsys):
    assert main(["doctor"]) == 0
    assert "onnxruntime" in capsys.readouterr().out


def test_run_writes_all_results(image, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["run", str(image), "--model", "tiny",
               "--checkpoint", str(checkpoint), "--no-resize", "--classes", "cat;dog,puppy;sky", "--things",
               "cat;dog", "--out", str(out), "--dump-tensors", str(tmp_path / "t.npz"), "--no-progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert stdout.strip().splitlines()[-1].startswith("segmented 1 image in ")  # the summary line
    assert f"results in {out}/: semantic/, color/, overlay/, panoptic/, panoptic.json, instances.json" in stdout
    semantic = Image.open(out / "semantic" / "scene.png")
    assert semantic.mode == "P"  # class indices as pixels, the class colours as palette
    labels = np.asarray(semantic)
    assert labels.shape == (70, 90) and labels.max() < 3
    colour = np.asarray(Image.open(out / "color" / "scene.png"))
    palette = np.asarray(semantic.getpalette()[:9], dtype=np.uint8).reshape(3, 3)
    np.testing.assert_array_equal(colour, palette[labels])
    overlay = np.asarray(Image.open(out / "overlay" / "scene.png"))
    assert overlay.shape[0] >= 384 and overlay.shape[1] > overlay.shape[0] * 90 // 70  # enlarged, with a legend
    coco = json.loads((out / "panoptic.json").read_text())
    assert coco["images"] == [{"id": "scene", "file_name": "scene.png", "height": 70, "width": 90}]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]  # no ids in --classes: 1..K, COCO's convention
    (pan,) = coco["annotations"]
    assert pan["file_name"] == "scene.png" and pan["image_id"] == "scene"
    ids = rgb2id(np.asarray(Image.open(out / "panoptic" / "scene.png")))
    assert set(np.unique(ids)) - {0} == {s["id"] for s in pan["segments_info"]}
    for s in pan["segments_info"]:
        assert (ids == s["id"]).sum() == s["area"] and s["bbox"] == mask_bbox(ids == s["id"])
        assert s["category_id"] in (1, 2, 3)
    from pycocotools import mask as mask_utils

    inst = json.loads((out / "instances.json").read_text())
    for i in inst:
        m = mask_utils.decode(i["segmentation"])
        assert m.shape == (70, 90) and i["area"] == m.sum() and i["bbox"] == mask_bbox(m.astype(bool))
        assert i["category_name"] in ("cat", "dog") and i["category_id"] in (1, 2)  # panoptic on: things only
    t = np.load(tmp_path / "t.npz")
    q = 20
    assert t["pred_logits"].shape == (1, q, 4) and t["mask_cls_logprob"].shape == (q, 4)
    assert t["sem_seg"].shape == (3, 70, 90) and t["panoptic_seg"].dtype == np.int32
    assert t["instance_masks"].dtype == bool and t["sam_embedding"].shape[:2] == (1, 64)
    np.testing.assert_array_equal(t["sem_seg"].argmax(0), labels)


def test_vocabulary_file_ids_are_the_category_ids(image, checkpoint, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("5:cat,kitty\n0:invalid_class_id\n\n9:sky\n")
    out = tmp_path / "out"
    assert main(["run", str(image), "--model", "tiny", "--checkpoint", str(checkpoint), "--no-resize", "--vocab",
                 str(vocab), "--out", str(out), "--no-progress"]) == 0
    coco = json.loads((out / "panoptic.json").read_text())
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(5, "cat"), (9, "sky")]
    assert {s["category_id"] for s in coco["annotations"][0]["segments_info"]} <= {5, 9}


def test_run_folder_and_glob_report_files_that_are_not_images(image, checkpoint, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        Image.open(image).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"left out: hidden")
    (folder / "sub").mkdir()  # not recursive
    args = ["--model", "tiny", "--checkpoint", str(checkpoint), "--no-resize", "--classes", "cat;sky",
            "--no-progress", "--batch", "2"]
    out = tmp_path / "out"
    assert main(["run", str(folder), "--out", str(out), *args]) == 2  # results written, one file skipped
    captured = capsys.readouterr()
    assert "segmented 2 images in " in captured.out and "1 skipped (not images)" in captured.out
    err = captured.err.strip().splitlines()
    assert f"skipped {folder / 'notes.txt'}: not an image file" in err[-2]
    assert err[-1].startswith("error: 1 of 3 files are not images and were skipped")
    assert sorted(p.name for p in (out / "semantic").iterdir()) == ["a.png", "b.png"]
    coco = json.loads((out / "panoptic.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["a.png", "b.png"]  # sorted by name
    out2 = tmp_path / "out2"
    assert main(["run", str(folder / "*.png"), "--out", str(out2), *args]) == 0  # a pattern: the images only
    assert sorted(p.name for p in (out2 / "overlay").iterdir()) == ["a.png", "b.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "semantic" / "a.png")),
                                  np.asarray(Image.open(out2 / "semantic" / "a.png")))
    assert main(["run", str(tmp_path / "*.jpeg"), "--out", str(out2), *args]) == 2
    assert "no file matches the pattern" in capsys.readouterr().err
    coco = tmp_path / "coco.json"  # a dataset's image ids, matched by name; notes.txt needs none
    coco.write_text(json.dumps({"images": [{"id": 12, "file_name": "b.jpg"}, {"id": 11, "file_name": "a.jpg"}],
                                "categories": [{"id": 3, "name": "cat"}, {"id": 8, "name": "sky", "isthing": 0}]}))
    out3 = tmp_path / "out3"
    assert main(["run", str(folder), "--out", str(out3), "--coco-json", str(coco), *args[:5], "--no-progress"]) == 2
    written = json.loads((out3 / "panoptic.json").read_text())
    assert [im["id"] for im in written["images"]] == [11, 12]
    assert [(c["id"], c["name"], c["isthing"]) for c in written["categories"]] == [(3, "cat", 1), (8, "sky", 0)]


def test_batches_give_the_results_of_single_images(image, checkpoint, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.RandomState(1)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.randint(0, 256, (70, 90, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    args = ["--model", "tiny", "--checkpoint", str(checkpoint), "--no-resize", "--classes", "cat;dog;sky",
            "--no-progress"]
    assert main(["run", str(folder), "--out", str(tmp_path / "one"), *args]) == 0
    assert main(["run", str(folder), "--out", str(tmp_path / "two"), "--batch", "2", *args]) == 0
    for name in ("a", "b", "c"):
        one = np.asarray(Image.open(tmp_path / "one" / "semantic" / f"{name}.png"))
        two = np.asarray(Image.open(tmp_path / "two" / "semantic" / f"{name}.png"))
        assert (one == two).mean() > 0.99


@pytest.mark.parametrize("args, message", [
    (["--classes", ""], "vocabulary"),
    (["--classes", "cat;cat"], "duplicate class name"),
    (["--classes", "cat", "--vocab", "x.txt"], "not both"),
])
def test_bad_vocabulary_exits_2_and_writes_nothing(image, tmp_path, capsys, args, message):
    out = tmp_path / "o"
    assert main(["run", str(image), "--model", "tiny", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_bad_image_and_checkpoint_exit_2(image, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 100)
    out = tmp_path / "o"
    assert main(["run", str(image), str(bad), "--model", "tiny", "--classes", "a;b", "--out", str(out)]) == 2
    assert "bad.jpg" in capsys.readouterr().err and not out.exists()
    from cmpf.model import build_model

    torch.save({"model": build_model("tiny-fcclip").state_dict()}, tmp_path / "fc.pth")
    assert main(["run", str(image), "--model", "tiny", "--checkpoint", str(tmp_path / "fc.pth"),
                 "--classes", "a;b", "--out", str(out)]) == 2
    assert "group 'sam' is absent" in capsys.readouterr().err and not out.exists()


def test_package_imports_without_optional_backends():
    code = (
        "import sys\n"
        "for m in ('tensorrt', 'onnxruntime', 'triton', 'onnx'): sys.modules[m] = None\n"
        "import cmpf, cmpf.pipeline, cmpf.runtime, cmpf.spec, cmpf.kernels.masked_attention\n"
        "from cmpf.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
