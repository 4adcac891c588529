"""The joints between packages: import contracts, the one resolver, manifest defaults, file modes."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import exported
from cmpf.cli import main

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.RandomState(1)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.randint(0, 256, (48, 64, 3), dtype=np.uint8)).save(d / name)
    return [d / "a.png", d / "b.png"]


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install 'cmpf[dev]')")
def test_import_contracts_hold():
    result = _lint(ROOT, ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install 'cmpf[dev]')")
def test_a_broken_arrow_fails_the_contracts(tmp_path):
    """A scratch copy of the tree where the runtime imports the exporter must fail `lint-imports`."""
    shutil.copytree(ROOT / "cmpf", tmp_path / "cmpf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    base = tmp_path / "cmpf" / "runtime" / "base.py"
    base.write_text(base.read_text() + "\nfrom cmpf.export import api  # noqa: E402,F401 (broken on purpose)\n")
    result = _lint(tmp_path, tmp_path)
    assert result.returncode != 0
    assert "The runtime never imports export, engines, bench or the CLI BROKEN" in " ".join(result.stdout.split())


def test_eager_model_with_another_backend_is_refused(images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", str(images[0]), "--model", "tiny", "--backend", "aoti", "--classes", "a;b", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --model tiny runs the eager PyTorch model") and "--format aoti" in err[0]
    assert not out.exists()


def test_artifacts_refuse_conflicting_model_options(images, tmp_path, capsys):
    artifacts = exported.tiny_export(("onnx",), ("text_encoder",))
    for extra, message in ((["--checkpoint", "x.pth"], "carries its own weights; drop --checkpoint"),
                           (["--model", "tiny-fcclip"], "asks for another model than")):
        code = main(["run", str(images[0]), "--artifacts", str(artifacts), "--classes", "a", "--out",
                     str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def artifacts_with_vocabulary(tmp_path_factory):
    """The shared tiny export with a vocabulary and seen classes recorded in its manifest."""
    from cmpf.manifest import Manifest
    from cmpf.vocabulary import parse_class_list

    directory = exported.copy_of(exported.tiny_export(("onnx",)), tmp_path_factory.mktemp("vocab"))
    manifest = Manifest.read(directory)
    vocabulary = parse_class_list("cat;dog,puppy;sky", things=["cat", "dog"])
    dataclasses.replace(manifest, vocabulary=vocabulary,
                        inference=manifest.inference.with_seen((("sky",),))).write(directory)
    return directory


def test_run_artifacts_defaults_to_the_manifest_vocabulary(artifacts_with_vocabulary, images, tmp_path, umask_022):
    out = tmp_path / "out"
    assert main(["run", *map(str, images), "--artifacts", str(artifacts_with_vocabulary), "--out", str(out)]) == 0
    labels = np.asarray(Image.open(out / "semantic" / "a.png"))
    assert labels.shape == (48, 64) and labels.max() < 3
    files = sorted(f for f in out.rglob("*") if f.is_file())  # 4 PNGs per image, panoptic.json, instances.json
    assert len(files) == 4 * len(images) + 2 and not [f for f in out.rglob(".*")]
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o644}  # a normal write's mode under umask 022


def test_text_encoder_runs_once_per_vocabulary(artifacts_with_vocabulary, images):
    from cmpf.predictor import ModelSource, Predictor, load_predictor
    from cmpf.preprocess import load_image

    loaded = load_predictor(ModelSource(artifacts=str(artifacts_with_vocabulary)))
    calls = []
    runners = dict(loaded.runners)
    text = runners["text_encoder"]
    runners["text_encoder"] = type("Counting", (), {
        "backend": text.backend, "graph": text.graph, "close": text.close,
        "__call__": lambda self, inputs: calls.append(1) or text(inputs)})()
    predictor = Predictor(runners, loaded.cfg, loaded.backend, options=loaded.options, vocabulary=loaded.vocabulary)
    assert predictor.options.seen_mask(predictor.vocabulary.classes) == [False, False, True]
    for path in images:
        predictor.segment([load_image(path)])
    assert len(calls) == 1  # 4 synonyms x 14 prompts: one batch, encoded once for both images


def test_export_writes_files_with_normal_permissions(tmp_path, umask_022):
    from cmpf.export.api import ExportConfig, export_model

    with pytest.warns(UserWarning, match="random weights"):
        export_model(ExportConfig("tiny", str(tmp_path), graphs=("mask_classifier",), verify=False),
                     model=exported.tiny_model(), progress=False)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in tmp_path.iterdir()}
    assert set(modes) == {"manifest.json", "weights.pth", "mask_classifier.fp32.onnx"}
    assert set(modes.values()) == {0o644}, modes


def test_atomic_write_honours_the_umask(tmp_path):
    from cmpf.io import write_text

    old = os.umask(0o027)
    try:
        path = write_text(tmp_path / "x.txt", "hello")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("cmpf 0.")
