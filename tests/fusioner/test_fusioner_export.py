"""Fusioner export (ONNX; AOTInductor under ``slow``) and ``cmpf run`` on ``tiny-fusioner``.

Each exported graph is compared with the eager wrapper at sizes other than the trace sizes (batch and
K of 1, as per-class inference uses them, and larger) within the ``("onnxruntime", "fp32")`` row of
``cmpf.tolerances``; ``cmpf run --artifacts`` through ONNX Runtime is compared with the eager
``segment`` of the same weights; bad input ends in one line before anything is written.
One ONNX export per session (~25 s on 2 cores), shared by the tests here.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cmpf.fusioner.graphs import FUSION_DECODER, GRAPH_NAMES, TEXT_ENCODER, VISUAL_ENCODER, graph_specs

pytest.importorskip("onnxruntime")

CLASSES = "cat;dog;diningtable"
# (graph, sizes) pairs none of which is the trace's (batch 2, K 3, "cat")
SIZES = [(VISUAL_ENCODER, {"batch": 1}), (VISUAL_ENCODER, {"batch": 3}), (TEXT_ENCODER, {"class_name": "dog"}),
         (TEXT_ENCODER, {"class_name": "pottedplant"}), (FUSION_DECODER, {"batch": 1, "num_classes": 1}),
         (FUSION_DECODER, {"batch": 3, "num_classes": 2}), (FUSION_DECODER, {"batch": 1, "num_classes": 5})]


def _export(model, out, formats):
    from cmpf.export.api import ExportConfig
    from cmpf.fusioner.export import export_fusioner

    with pytest.warns(UserWarning, match="random weights"):
        export_fusioner(ExportConfig("tiny-fusioner", str(out), formats=formats, classes=CLASSES), model=model,
                        progress=False)
    return out


@pytest.fixture(scope="module")
def onnx_export(tiny_fusioner, tmp_path_factory):
    return _export(tiny_fusioner, tmp_path_factory.mktemp("fusioner-export") / "tiny-fusioner", ("onnx",))


@pytest.fixture(scope="module")
def image_224x300(tmp_path_factory):
    """A 224×300 RGB image with structure: two windows, one overlap."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 80, size=(224, 300, 3), dtype=np.uint8)
    img[:, 150:] += np.array([150, 100, 40], dtype=np.uint8)
    path = tmp_path_factory.mktemp("fusioner-images") / "scene.png"
    Image.fromarray(img).save(path)
    return path, img


def _compare_graphs(model, manifest, backend):
    from cmpf.fusioner.graphs import call_graph, example_inputs, graph_module
    from cmpf.runtime import load_runner
    from cmpf.tolerances import REL, rel_error

    bound = REL[(backend, "fp32")]
    fmt = {"onnxruntime": "onnx", "aoti": "aoti"}[backend]
    runners = {g: load_runner(backend, manifest.artifact(g, fmt)) for g in GRAPH_NAMES}
    for graph, sizes in SIZES:
        spec = graph_specs(model.cfg)[graph]
        inputs = example_inputs(spec, seed=3, **sizes)
        expected = call_graph(graph_module(model, graph), spec, inputs)
        actual = runners[graph](inputs)
        for name, ref in expected.items():
            assert actual[name].shape == ref.shape, (graph, sizes, name)
            err = rel_error(actual[name], ref)
            assert err <= bound, f"{graph} {sizes} {name}: {err:.2e} > {bound}"


def test_manifest_is_the_cmpf_format_with_the_fusioner_family(onnx_export):
    from cmpf.fusioner.manifest import FusionerManifest
    from cmpf.manifest import ArtifactError, Manifest, manifest_family

    data = json.loads((onnx_export / "manifest.json").read_text())
    cmpf_keys = {"format_version", "model", "inference", "preprocessing", "vocabulary", "weights", "spec_args",
                 "graphs", "producer", "export", "files"}
    assert set(data) == cmpf_keys | {"family"} and data["family"] == "fusioner"
    assert data["inference"]["mode"] == "per-class" and data["preprocessing"]["window_stride"] == 149
    assert manifest_family(onnx_export) == "fusioner"
    manifest = FusionerManifest.read(onnx_export)
    assert manifest.model.name == "tiny-fusioner" and manifest.vocabulary.names == ["cat", "dog", "diningtable"]
    assert set(manifest.graphs) == set(GRAPH_NAMES)
    assert sorted(manifest.files) == sorted([f"{g}.fp32.onnx" for g in GRAPH_NAMES] + ["weights.pth"])
    for g in GRAPH_NAMES:  # the export-time ONNX Runtime check at batch 1 / K 1
        assert max(manifest.graphs[g].files["onnx"].verified_rel_error.values()) <= 1e-4
    with pytest.raises(ArtifactError, match="a fusioner export"):
        Manifest.read(onnx_export)  # CMPF's reader refuses it in one line


def test_onnx_graphs_match_eager(tiny_fusioner, onnx_export):
    from cmpf.fusioner.manifest import FusionerManifest

    _compare_graphs(tiny_fusioner, FusionerManifest.read(onnx_export), "onnxruntime")


def test_changed_file_is_refused(onnx_export, tmp_path):
    from cmpf.fusioner.manifest import FusionerManifest
    from cmpf.manifest import ArtifactError

    copy = shutil.copytree(onnx_export, tmp_path / "copy")
    with open(copy / f"{FUSION_DECODER}.fp32.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        FusionerManifest.read(copy).artifact(FUSION_DECODER, "onnx")


@pytest.mark.parametrize("mode", ["per-class", "joint"])
def test_run_artifacts_matches_eager_segment(tiny_fusioner, onnx_export, image_224x300, tmp_path, mode, capsys):
    from cmpf.cli import main
    from cmpf.fusioner import SegmentOptions, segment
    from cmpf.tolerances import MASK_IOU, REL, rel_error

    path, img = image_224x300
    out, dump = tmp_path / "out", tmp_path / "t.npz"
    assert main(["run", str(path), "--artifacts", str(onnx_export), "--out", str(out), "--mode", mode,
                 "--dump-tensors", str(dump), "--no-progress"]) == 0
    assert f"{mode} mode, onnxruntime backend" in capsys.readouterr().out
    ref = segment(tiny_fusioner, img, ["cat", "dog", "diningtable"], SegmentOptions(mode=mode))
    with np.load(dump) as z:
        t = {k: z[k] for k in z.files}
    assert t["text_embeddings"].shape == (3, 32) and t["visual_tokens"].shape == (1, 256, 32)
    assert t["logits"].shape == t["masks"].shape == (3, 224, 300) and t["masks"].dtype == bool
    assert str(t["mode"]) == mode and list(t["class_names"]) == ["cat", "dog", "diningtable"]
    assert rel_error(t["text_embeddings"], ref.text_embeddings) <= REL[("onnxruntime", "fp32")]
    assert rel_error(t["visual_tokens"], ref.first_window_tokens) <= REL[("onnxruntime", "fp32")]
    assert rel_error(t["logits"], ref.logits) <= REL[("onnxruntime", "fp32")]
    for k in range(3):
        a, b = t["masks"][k], ref.masks[k].numpy()
        union = (a | b).sum()
        assert union == 0 or (a & b).sum() / union >= MASK_IOU
    # the files say the same as the dump
    results = json.loads((out / "fusioner.json").read_text())
    assert results["mode"] == mode and results["classes"] == ["cat", "dog", "diningtable"]
    semantic = np.array(Image.open(out / "semantic" / "scene.png"))
    np.testing.assert_array_equal(semantic, t["labels"])
    for k, name in enumerate(results["classes"]):
        mask = np.array(Image.open(out / results["images"][0]["masks"][name]))
        np.testing.assert_array_equal(mask > 0, t["masks"][k])
    if mode == "per-class":  # independent binary decisions (sigmoid > 0.5 strict), as the official evaluation
        np.testing.assert_array_equal(t["masks"], t["logits"] > 0)
    else:  # one label per pixel: the masks are the semantic map's one-hot
        np.testing.assert_array_equal(t["masks"], t["labels"][None] == np.arange(1, 4)[:, None, None])


def test_text_encoder_runs_once_per_class_name(onnx_export, image_224x300, tmp_path):
    from cmpf.fusioner.run import FusionerRunConfig, FusionerSource, run_fusioner

    path, img = image_224x300
    second = tmp_path / "second.png"
    Image.fromarray(img[:, ::-1].copy()).save(second)
    source = FusionerSource(artifacts=str(onnx_export))
    result = run_fusioner(FusionerRunConfig((str(path), str(second)), str(tmp_path / "out"), source, classes="cat;dog"),
                          progress=False)
    assert result.images == 2 and result.text_encoder_calls == 2  # 2 names × 2 images: once per name


def _fails(argv, capsys, match):
    from cmpf.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_bad_input_is_one_line_before_anything_is_written(onnx_export, image_224x300, tmp_path, capsys):
    path, img = image_224x300
    small = tmp_path / "small.png"
    Image.fromarray(img[:200]).save(small)
    out = tmp_path / "out"
    run = ["run", "--artifacts", str(onnx_export), "--out", str(out), "--no-progress"]
    _fails(run[:1] + [str(small)] + run[1:], capsys, "smaller than one 224x224 window")
    _fails(run[:1] + [str(path)] + run[1:] + ["--classes", ";"], capsys, "K=0")
    _fails(run[:1] + [str(path)] + run[1:] + ["--classes", "cat " * 80], capsys, "CLIP takes at most 77")
    _fails(run[:1] + [str(path)] + run[1:] + ["--classes", "dog,puppy"], capsys, "one name per class")
    _fails(run[:1] + [str(path)] + run[1:] + ["--sam-ensemble"], capsys, "CMPF / FC-CLIP options")
    _fails(["run", str(path), "--model", "tiny-fusioner", "--out", str(out), "--classes", "cat", "--backend",
            "onnxruntime"], capsys, "runs exported files")
    assert not out.exists()


def test_model_run_uses_the_eager_model(image_224x300, tmp_path, capsys):
    from cmpf.cli import main

    path, _ = image_224x300
    out = tmp_path / "out"
    assert main(["run", str(path), "--model", "tiny-fusioner", "--classes", "cat", "--out", str(out),
                 "--no-progress"]) == 0
    assert "per-class mode, torch backend" in capsys.readouterr().out
    assert json.loads((out / "fusioner.json").read_text())["source"]["model"] == "tiny-fusioner"


def test_export_refuses_cmpf_options(tmp_path, capsys):
    _fails(["export", "--model", "tiny-fusioner", "--out", str(tmp_path / "x"), "--things", "cat"], capsys,
           "CMPF / FC-CLIP options")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_aoti_graphs_and_run_match_eager(tiny_fusioner, image_224x300, tmp_path, capsys):
    """AOTInductor compile of the three graphs takes ~90 s on 2 cores, hence ``slow``."""
    from cmpf.cli import main
    from cmpf.fusioner import segment
    from cmpf.fusioner.manifest import FusionerManifest
    from cmpf.tolerances import REL, rel_error

    out = _export(tiny_fusioner, tmp_path / "aoti", ("aoti",))
    _compare_graphs(tiny_fusioner, FusionerManifest.read(out), "aoti")
    path, img = image_224x300
    dump = tmp_path / "t.npz"
    assert main(["run", str(path), "--artifacts", str(out), "--backend", "aoti", "--out", str(tmp_path / "o"),
                 "--dump-tensors", str(dump), "--no-progress"]) == 0
    with np.load(dump) as z:
        logits = z["logits"]
    ref = segment(tiny_fusioner, img, ["cat", "dog", "diningtable"])
    assert rel_error(logits, ref.logits) <= REL[("aoti", "fp32")]


def test_parity_gates_the_export_against_eager(onnx_export, image_224x300, tmp_path, capsys, monkeypatch):
    from cmpf.cli import main
    from cmpf.tolerances import REL

    path, _ = image_224x300
    report_path = tmp_path / "parity.json"
    assert main(["parity", "--artifacts", str(onnx_export), "--image", str(path), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["ok"] and {r["check"] for r in report["rows"]} >= {
        "text_embeddings", "first_window_tokens", "logits", "mask cat", "semantic"}
    assert all(r["value"] <= 1e-4 for r in report["rows"] if r["metric"] == "rel")
    capsys.readouterr()
    monkeypatch.setitem(REL, ("onnxruntime", "fp32"), 1e-12)  # a bound no float32 file meets: the gate must fire
    assert main(["parity", "--artifacts", str(onnx_export), "--image", str(path)]) == 1
    assert "parity gate failed: onnxruntime" in capsys.readouterr().err


def test_bench_times_each_graph_window_and_image(onnx_export, image_224x300, tmp_path, capsys):
    from cmpf.cli import main

    path, _ = image_224x300
    out = tmp_path / "bench.json"
    assert main(["bench", "--artifacts", str(onnx_export), "--image", str(path), "--classes", "cat;dog", "--iters", "1",
                 "--warmup", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["backend"] == "onnxruntime" and report["classes"] == ["cat", "dog"]
    assert {"visual_encoder", "text_encoder", "fusion_decoder_k1", "fusion_decoder_k2", "image_per_class_cached",
            "image_per_class_uncached"} <= set(rows)
    assert all(r["median_ms"] > 0 for name, r in rows.items() if name != "derived")
    d = rows["derived"]
    assert d["windows_per_image"] == 2 and d["text_calls_per_image"]["official_per_window"] == 4
    assert d["official_text_per_image_ms"] == pytest.approx(4 * rows["text_encoder"]["median_ms"])


def test_eval_of_the_export_matches_the_eager_model(onnx_export, tmp_path):
    """``cmpf eval --artifacts`` on ONNX Runtime scores what the eager model of the same weights scores."""
    from test_fusioner_fewshot import _pascal

    from cmpf.fusioner.evaluate import FusionerEvalConfig, evaluate_fusioner
    from cmpf.fusioner.run import FusionerSource

    root, splits = tmp_path / "VOC", tmp_path / "splits"
    _pascal(root, splits, np.random.default_rng(0))
    reports = {b: evaluate_fusioner(FusionerEvalConfig("pascal-5i", 0, str(root), str(splits),
                                                       FusionerSource(artifacts=str(onnx_export), backend=b)),
                                    progress=False) for b in ("onnxruntime", "torch")}
    assert reports["onnxruntime"]["backend"] == "onnxruntime" and reports["onnxruntime"]["episodes_scored"] == 3
    assert reports["onnxruntime"]["miou"] == pytest.approx(reports["torch"]["miou"], abs=1e-3)
    assert reports["onnxruntime"]["fbiou"] == pytest.approx(reports["torch"]["fbiou"], abs=1e-3)


@pytest.mark.slow
def test_vitl14_onnx_export_reproduces_the_official_outputs(tmp_path, capsys):
    """fusioner-vitl14 with the golden's synthetic weights, exported to ONNX (3.7 GB, ~4 min on 2 cores) and run
    with ``cmpf run --artifacts``: text embedding, first-window tokens and logits of the official code within 1e-4."""
    import torch

    import fusioner_reference as ref
    from cmpf.cli import main
    from cmpf.tolerances import REL, rel_error

    if ref.missing():
        pytest.skip(f"Fusioner golden files absent: {ref.missing()}")
    state, bad = ref.synthetic_state_dict()
    assert not bad
    weights = tmp_path / "variantA.pth"
    torch.save({"model": state}, weights)
    del state
    out = tmp_path / "fz"
    assert main(["export", "--model", "fusioner-vitl14", "--checkpoint", str(weights), "--out", str(out)]) == 0
    image = tmp_path / "crop.png"
    Image.fromarray(ref.input_crop()).save(image)
    dump = tmp_path / "t.npz"
    assert main(["run", str(image), "--artifacts", str(out), "--classes", "cat", "--out", str(tmp_path / "o"),
                 "--dump-tensors", str(dump), "--no-progress"]) == 0
    golden = ref.arrays()
    with np.load(dump) as z:
        ours = {k: z[k] for k in z.files}
    bound = REL[("onnxruntime", "fp32")]
    assert rel_error(ours["text_embeddings"], golden["text_embed_f32"]) <= bound
    assert rel_error(ours["visual_tokens"], golden["fusion_in_visual_f32"]) <= bound  # the unit tokens fused
    assert rel_error(ours["logits"], golden["logits_final_f32"][0]) <= bound
    flipped = ours["labels"] != golden["pred_label_u8"][0]  # only where the official logit is within float noise of 0
    assert not flipped.any() or np.abs(golden["logits_final_f32"][0, 0][flipped]).max() < 1e-5


def test_export_with_clip_weights_given_apart(tiny_fusioner, tmp_path, capsys):
    """A fusion + decoder checkpoint and an open_clip-named CLIP file: loaded, exported, recorded, checked."""
    import torch

    from cmpf.cli import main
    from cmpf.fusioner import build_model
    from cmpf.fusioner.graphs import call_graph, example_inputs, graph_module
    from cmpf.fusioner.manifest import FusionerManifest
    from cmpf.manifest import ArtifactError
    from cmpf.runtime import load_runner

    state, towers = tiny_fusioner.state_dict(), ("img_model.", "text_model.")
    ckpt, clip = tmp_path / "fusion_decoder.pth", tmp_path / "clip.pt"
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith(towers)}}, ckpt)
    torch.save({("visual." + k.removeprefix("img_model.")) if k.startswith("img_model.") else
                k.removeprefix("text_model."): v for k, v in state.items() if k.startswith(towers)}, clip)
    out = tmp_path / "export"
    assert main(["export", "--model", "tiny-fusioner", "--checkpoint", str(ckpt), "--clip-weights", str(clip),
                 "--out", str(out), "--graphs", TEXT_ENCODER]) == 0  # one graph: ~5 s instead of ~25 s
    capsys.readouterr()  # the progress bar
    manifest = FusionerManifest.read(out)
    assert manifest.clip_weights.path == str(clip.resolve()) and manifest.weights.path == str(ckpt.resolve())
    assert manifest.command.endswith(f"--clip-weights {clip}")
    rebuilt = build_model(manifest.model, manifest.weights_path(), manifest.clip_weights_path()).state_dict()
    assert rebuilt.keys() == state.keys() and all(torch.equal(rebuilt[k], v) for k, v in state.items())
    spec = graph_specs(tiny_fusioner.cfg)[TEXT_ENCODER]
    inputs = example_inputs(spec, class_name="pottedplant")
    expected = call_graph(graph_module(tiny_fusioner, TEXT_ENCODER), spec, inputs)
    actual = load_runner("onnxruntime", manifest.artifact(TEXT_ENCODER, "onnx"))(inputs)
    for name, ref in expected.items():  # the graph holds the given CLIP weights
        torch.testing.assert_close(actual[name], ref, rtol=1e-4, atol=1e-5)

    with open(clip, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="changed since the export"):
        manifest.clip_weights_path()
    _fails(["export", "--model", "tiny", "--clip-weights", str(clip), "--out", str(tmp_path / "a")], capsys,
           "--clip-weights applies to Fusioner presets")
    _fails(["export", "--model", "tiny-fusioner", "--clip-weights", str(clip), "--out", str(tmp_path / "b")], capsys,
           "give --checkpoint CKPT")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
