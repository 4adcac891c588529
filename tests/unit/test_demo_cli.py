"""`cmpf export | demo | bench | parity` end to end on the tiny preset (CLI wiring, exit codes, tables)."""

from __future__ import annotations

import json

import pytest

import exported

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def artifacts():
    return exported.tiny_export(("onnx",))


def test_export_command(tmp_path, capsys):
    from cmpf.cli import main

    train = tmp_path / "train.txt"
    train.write_text("1:cat,kitty\n2:sky\n")
    out = tmp_path / "art"
    assert main(["export", "--model", "tiny", "--out", str(out), "--graphs", "mask_classifier",
                 "--classes", "cat;dog", "--train-vocab", str(train)]) == 0
    assert f"wrote {out / 'manifest.json'}" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["graphs"]) == ["mask_classifier"]
    assert manifest["vocabulary"]["classes"] == [["cat"], ["dog"]]
    assert manifest["inference"]["seen"] == ["cat", "kitty", "sky"]  # the training vocabulary's synonyms
    assert manifest["inference"]["topk"] == 20  # the tiny preset's defaults
    assert manifest["weights"]["random_init"] is True
    assert max(manifest["graphs"]["mask_classifier"]["files"]["onnx"]["verified_rel_error"].values()) < 1e-4
    assert "--graphs mask_classifier" in manifest["export"]["command"]


def test_export_command_rejects_bad_arguments(tmp_path, capsys):
    from cmpf.cli import main

    assert main(["export", "--model", "tiny", "--out", str(tmp_path), "--format", "tflite"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown export formats ['tflite']; choose from onnx, aoti"
    assert main(["export", "--model", "tiny", "--out", str(tmp_path), "--graphs", "nope"]) == 2
    assert "has no graphs ['nope']" in capsys.readouterr().err
    assert main(["export", "--model", "tiny", "--out", str(tmp_path / "repo"), "--format", "triton-repo"]) == 2
    assert f"`cmpf triton-repo --artifacts DIR --out {tmp_path / 'repo'}`" in capsys.readouterr().err


def test_bench_eager_smoke(tmp_path, capsys):
    from cmpf.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--iters", "2", "--warmup", "1", "--backend", "torch",
                 "--min-size", "256", "--max-size", "320", "--json", str(out)]) == 0
    stages = [r["stage"] for r in json.loads(out.read_text())["stages"]]
    assert stages[0] == "preprocess" and stages[-1] == "segment" and "decoder" in stages
    assert "p50 ms" in capsys.readouterr().out


def test_bench_onnxruntime(artifacts, capsys):
    from cmpf.cli import main

    assert main(["bench", "--artifacts", str(artifacts), "--iters", "1", "--warmup", "0"]) == 0
    assert "| decoder" in capsys.readouterr().out


def test_parity_command_and_exit_code(artifacts, tmp_path, monkeypatch, capsys):
    from cmpf import tolerances
    from cmpf.cli import main

    rows_file = tmp_path / "parity.json"
    small = ["--min-size", "320", "--max-size", "416"]  # CLIP input 320×416: fast
    assert main(["parity", "--artifacts", str(artifacts), "--json", str(rows_file), *small]) == 0
    rows = json.loads(rows_file.read_text())["candidates"][0]["tensor"]
    assert {r["graph"] for r in rows} == {"clip_image_encoder", "sam_image_encoder", "text_encoder", "decoder",
                                         "mask_classifier"}
    assert all(r["ok"] and r["rel_error"] < 1e-4 for r in rows)
    assert {r["tolerance"] for r in rows} == {tolerances.REL[("onnxruntime", "fp32")]}  # the one table
    capsys.readouterr()
    monkeypatch.setitem(tolerances.REL, ("onnxruntime", "fp32"), 0.0)  # nothing passes a zero tolerance
    assert main(["parity", "--artifacts", str(artifacts), *small]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: parity gate failed: ")


def test_demo_on_existing_artifacts(artifacts, tmp_path, capsys):
    """The demo's reduced path (no training, no export): compare, run, score, print the tables and the files."""
    from cmpf.cli import main

    assert main(["demo", "--out", str(tmp_path), "--artifacts", str(artifacts), "--iters", "1", "--scenes", "2"]) == 0
    out = capsys.readouterr().out
    for graph in ("clip_image_encoder", "sam_image_encoder", "text_encoder", "decoder", "mask_classifier"):
        assert f"| {graph}" in out
    assert "| max rel. error |" in out and "| pixels agree |" in out and "| scene 2 " in out
    assert "segmented 2 images in " in out and "against their ground truth: PQ " in out
    assert "warning: the model gives a scene a single class everywhere" in out  # random weights: say so
    results = tmp_path / "results"
    for name in ("000000000001.png", "000000000002.png"):
        for folder in ("overlay", "semantic", "color", "panoptic"):
            assert (results / folder / name).is_file()
    assert f"{results / 'overlay'}  labelled overlays" in out  # where every file is


@pytest.mark.slow
def test_demo_full(tmp_path):
    """What `make demo` runs: generate, train, export (with AOTInductor too), then everything above."""
    from cmpf.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out_dir=str(tmp_path), aoti=True))
    assert result.ok and result.semantic_agreement > 0.99
    assert result.output_varies  # the trained model finds several classes in every scene
    assert result.quality["mIoU"] > 50 and result.quality["PQ"] > 30  # and mostly the right ones
    assert {r.backend for r in result.rows} == {"onnxruntime", "aoti"}
