"""`cmpf parity`: rule parsing and defaults, the Polygraphy input format, the three-level report on the
tiny export, and the gate: exit 0 on an identical candidate, 1 on perturbed weights, 2 on bad input."""

from __future__ import annotations

import json
import math
import tempfile

import numpy as np
import pytest
import torch

import exported
from cmpf import tolerances
from cmpf.bench.captured_inputs import read_polygraphy_inputs, write_polygraphy_inputs
from cmpf.bench.gates import check, parse_rules, resolve_rules
from cmpf.errors import InputError
from cmpf.io import sha256_file

SMALL = ["--min-size", "128", "--max-size", "160"]  # CLIP input 128×160: fast


def test_rules_parse_and_replace_defaults():
    rules = parse_rules("rel>1e-3, cos<0.99 ,pq_drop>=0.5")
    assert [str(r) for r in rules] == ["rel>0.001", "cos<0.99", "pq_drop>=0.5"]
    resolved = {r.metric: r for r in resolve_rules(rules, "onnxruntime", "fp32")}
    assert resolved["rel"].bound == 1e-3 and resolved["cos"].bound == 0.99  # given rules replace the defaults
    assert resolved["sem"].bound == tolerances.GATES["fp32"]["sem"][1]  # the others come from the one table
    fp16 = {r.metric: r for r in resolve_rules([], "onnxruntime", "fp16")}
    assert fp16["rel"].bound == tolerances.REL[("onnxruntime", "fp16")] and fp16["cos"].bound < 0.9999


def test_check_names_rule_and_margin():
    rules = parse_rules("rel>1e-4,cos<0.9999")
    values = {"rel": {"decoder.pred_logits": 3e-4, "decoder.pred_masks": 1e-6}, "cos": {"x.y": math.nan}}
    breaches = check("cand", rules, values)
    assert [(b.rule, b.where) for b in breaches] == [("rel>0.0001", "decoder.pred_logits"), ("cos<0.9999", "x.y")]
    assert breaches[0].margin == pytest.approx(2e-4)
    assert str(breaches[0]) == "cand: decoder.pred_logits rel=0.0003 breaks rel>0.0001 (past the bound by 0.0002)"


@pytest.mark.parametrize("text", ["rel>>1", "speed>3", "rel>abc", "cos"])
def test_malformed_rules(text):
    with pytest.raises(InputError, match="--fail-on"):
        parse_rules(text)


def test_polygraphy_input_format(tmp_path):
    feeds = [{"pixel_values": torch.randn(1, 3, 8, 8), "ids": np.arange(5, dtype=np.int64)}]
    path = write_polygraphy_inputs(tmp_path / "in.json", feeds)
    raw = json.loads(path.read_text())
    assert raw[0]["ids"]["polygraphy_class"] == "ndarray" and set(raw[0]["ids"]) == {"array", "polygraphy_class"}
    back = read_polygraphy_inputs(path)
    assert np.array_equal(back[0]["pixel_values"], feeds[0]["pixel_values"].numpy())
    assert back[0]["ids"].dtype == np.int64
    pg = pytest.importorskip("polygraphy.json")  # the real reader, where polygraphy is installed
    assert np.array_equal(pg.load_json(str(path))[0]["ids"], np.arange(5))


@pytest.fixture(scope="module")
def artifacts():
    pytest.importorskip("onnxruntime")
    return exported.tiny_export(("onnx",))


def perturbed_copy(directory, tmp_path, graph="decoder", scale=0.05):
    """A copy of an export whose ``graph`` ONNX weights carry noise (the manifest's sha256 updated)."""
    import onnx
    from onnx import numpy_helper

    out = exported.copy_of(directory, tmp_path)
    path = exported.artifact(out, graph, "onnx").path
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.size > 16:
            init.CopyFrom(numpy_helper.from_array(w + scale * (np.abs(w).mean() + 1e-3) *
                                                  rng.standard_normal(w.shape).astype(np.float32), init.name))
    onnx.save(model, str(path))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"][path.name] = sha256_file(path)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_gate_passes_identical_and_reports_three_levels(artifacts, tmp_path, capsys):
    from cmpf.cli import main

    out = tmp_path / "report"
    argv = ["parity", "--reference", "torch", "--candidate", f"{artifacts}:onnxruntime", "--dataset", "synthetic",
            "--synthetic-images", "2", "--synthetic-size", "56x72", "--fail-on", "rel>1e-4,cos<0.9999,pq_drop>0.1,miou_drop>0.5", "--out",
            str(out), *SMALL]
    assert main(argv) == 0
    report = json.loads((out / "parity.json").read_text())
    assert report["schema"] == "cmpf.parity/1" and report["ok"] and report["reproduce"] == {}
    cand = report["candidates"][0]
    assert {r["graph"] for r in cand["tensor"]} == {"clip_image_encoder", "sam_image_encoder", "text_encoder",
                                                   "decoder", "mask_classifier"}
    assert all(r["rel_error"] < 1e-4 and r["cosine"] > 0.9999 for r in cand["tensor"])
    images = {a["image"]: a for a in cand["image"]}
    assert "sample.png" in images and sum(n.startswith("synthetic/") for n in images) == 2
    assert all(a["semantic"] > 0.99 for a in images.values())
    assert set(cand["dataset"]["drops"]) == {"pq_drop", "miou_drop", "ap_drop"}
    assert abs(cand["dataset"]["drops"]["miou_drop"]) < 0.5
    assert "rel>0.0001" in cand["rules"] and "sem<0.99" in cand["rules"]  # given rules + table defaults
    md = (out / "parity.md").read_text()
    assert "# cmpf parity: PASS" in md and "(level 3)" in md
    assert report["settings"]["dataset"] == "synthetic" and report["settings"]["min_size"] == 128
    assert report["settings"]["synthetic_size"] == [56, 72]
    assert "cmpf-parity-synthetic" not in json.dumps(report)  # the generated set's temporary path stays out


def test_gate_fails_on_perturbed_weights(artifacts, tmp_path, capsys):
    from cmpf.bench.captured_inputs import read_polygraphy_inputs
    from cmpf.cli import main

    bad = perturbed_copy(artifacts, tmp_path)
    out = tmp_path / "report"
    assert main(["parity", "--candidate", f"{bad}:onnxruntime", "--reference", f"{artifacts}:torch",
                 "--out", str(out), *SMALL]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: parity gate failed: ") and "decoder." in err and "past the bound by" in err
    report = json.loads((out / "parity.json").read_text())
    assert not report["ok"]
    rules = {b["rule"] for b in report["candidates"][0]["breaches"]}
    assert "rel>0.0001" in rules
    repro = report["reproduce"]["decoder"]
    feeds = read_polygraphy_inputs(repro["inputs"])
    assert set(feeds[0]) >= {"text_embeddings", "res5"}
    assert repro["command"].startswith(f"polygraphy run {bad}") and "--onnxrt --load-inputs" in repro["command"]


def other_model_dir(directory, tmp_path):
    """A manifest-only directory of another config of the tiny model (no graph file: nothing gets loaded)."""
    data = json.loads((directory / "manifest.json").read_text())
    data["model"]["name"], data["model"]["enc_layers"] = "tiny-other", data["model"]["enc_layers"] + 1
    out = tmp_path / "other"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps(data))
    return out


@pytest.mark.parametrize("sides", [
    ["--reference", "{a}:onnxruntime", "--candidate", "{other}:onnxruntime"],
    ["--reference", "torch", "--model", "tiny-rn", "--candidate", "{a}:onnxruntime"],
])
def test_refuses_artifacts_of_another_model(artifacts, tmp_path, capsys, sides):
    """Checked on the manifests (and presets) before anything is loaded: one line, exit 2."""
    from cmpf.cli import main

    other = other_model_dir(artifacts, tmp_path)
    assert main(["parity", *[s.format(a=artifacts, other=other) for s in sides], *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds another model" in err[0] and "exported from the same model" in err[0]
    assert ("(tiny-other)" in err[0] and "enc_layers" in err[0]) if "{other}" in sides[3] else "tiny-rn" in err[0]


def test_failing_graphs_without_out_are_named_not_saved():
    from cmpf.bench.parity_report import ParityReport

    report = ParityReport("torch", "tiny", [], ["sample.png"], {}, ["decoder"], {"min_size": 128, "limit": None})
    md = report.to_markdown()
    assert "rerun with `--out DIR` to save the inputs of decoder" in md and "min_size 128" in md and "limit" not in md
    assert report.to_json()["failing_graphs"] == ["decoder"] and report.to_json()["reproduce"] == {}


@pytest.mark.parametrize("extra, message", [
    (["--candidate", "{a}:tflite"], "unknown backend 'tflite'"),
    (["--candidate", "{a}", "--fail-on", "rel>>1"], "--fail-on: cannot parse rule"),
    (["--candidate", "/nonexistent/dir:onnxruntime"], "is not a directory"),
    (["--candidate", "{a}", "--dataset", "synthetic", "--synthetic-size", "20x400"], "--synthetic-size '20x400'"),
    (["--candidate", "{a}", "--dataset", "coco-panoptic-val", "--data-root", "{tmp}"], ""),
])
def test_bad_input_exits_2(artifacts, tmp_path, capsys, extra, message):
    from cmpf.cli import main

    argv = ["parity", *[e.format(a=artifacts, tmp=tmp_path) for e in extra], *SMALL]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_committed_report_names_no_machine_local_path():
    """benchmarks/results/parity_tiny_synthetic.* come from benchmarks/parity_tiny.py: paths as given, relative."""
    from pathlib import Path

    from cmpf.bench.parity_report import read_report

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    report = read_report(results / "parity_tiny_synthetic.json")
    assert [c["label"] for c in report["candidates"]] == ["tiny:onnxruntime"] and report["settings"]["dataset"]
    for name in ("parity_tiny_synthetic.json", "parity_tiny_synthetic.md"):
        text = (results / name).read_text()
        assert "/tmp" not in text and tempfile.gettempdir() not in text and str(Path.home()) not in text
