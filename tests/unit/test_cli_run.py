import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cmpf.cli import main


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
               "cat;dog", "--out", str(out), "--dump-tensors", str(tmp_path / "t.npz")])
    assert rc == 0
    labels = np.asarray(Image.open(out / "scene_semantic.png"))
    assert labels.shape == (70, 90) and labels.max() < 3
    assert np.asarray(Image.open(out / "scene_overlay.png")).shape == (70, 90, 3)
    pan = json.loads((out / "scene_panoptic.json").read_text())
    rgb = np.asarray(Image.open(out / "scene_panoptic.png")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    assert set(np.unique(ids)) - {0} == {s["id"] for s in pan["segments_info"]}
    for s in pan["segments_info"]:
        assert (ids == s["id"]).sum() == s["area"]
    from pycocotools import mask as mask_utils

    inst = json.loads((out / "scene_instances.json").read_text())
    assert all(mask_utils.decode(i["segmentation"]).shape == (70, 90) for i in inst)
    assert all(i["category_name"] in ("cat", "dog") for i in inst)  # panoptic on: things only
    t = np.load(tmp_path / "t.npz")
    q = 20
    assert t["pred_logits"].shape == (1, q, 4) and t["mask_cls_logprob"].shape == (q, 4)
    assert t["sem_seg"].shape == (3, 70, 90) and t["panoptic_seg"].dtype == np.int32
    assert t["instance_masks"].dtype == bool and t["sam_embedding"].shape[:2] == (1, 64)
    np.testing.assert_array_equal(t["sem_seg"].argmax(0), labels)


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
