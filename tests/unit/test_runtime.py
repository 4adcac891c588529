"""Runners and artifact directories: input validation, refusals (hash, manifest, device), load_runner."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import exported

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def text_only():
    """An artifact directory with the text encoder alone (the cheapest graph to export)."""
    return exported.tiny_export(("onnx",), ("text_encoder",))


def graph_artifact(directory, graph, fmt):
    from cmpf.manifest import Manifest

    return Manifest.read(directory).artifact(graph, fmt)


def read_manifest(directory):
    from cmpf.manifest import Manifest

    return Manifest.read(directory)


def load_artifacts(directory, backend):
    from cmpf.predictor import ModelSource, load_predictor

    return load_predictor(ModelSource(artifacts=str(directory)), backend)


@pytest.fixture
def text_runner(text_only):
    from cmpf.runtime import load_runner

    return load_runner("onnxruntime", graph_artifact(text_only, "text_encoder", "onnx"))


def _edit_manifest(directory, edit):
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_onnxruntime_runner_runs_and_validates(text_runner):
    from cmpf.text import tokenize

    tokens = tokenize(["a photo of a cat.", "a photo of a dog."])
    out = text_runner({"token_ids": tokens})
    assert list(out) == ["text_features"] and out["text_features"].shape == (2, 64)
    assert text_runner.backend == "onnxruntime" and text_runner.graph.name == "text_encoder"
    with pytest.raises(ValueError, match=r"missing inputs \['token_ids'\]"):
        text_runner({})
    with pytest.raises(ValueError, match="unexpected inputs"):
        text_runner({"token_ids": tokens, "pixel_values": torch.zeros(1)})
    with pytest.raises(ValueError, match="dtype torch.int32, expected torch.int64"):
        text_runner({"token_ids": tokens.int()})
    with pytest.raises(ValueError, match="rank 1"):
        text_runner({"token_ids": tokens[0]})
    with pytest.raises(ValueError, match="dim 1 is 76, expected 77"):
        text_runner({"token_ids": tokens[:, :76]})


def test_aoti_runner_validates_before_calling_the_package():
    from cmpf.model.graphs import model_specs
    from cmpf.runtime.aoti_runner import AotiRunner

    runner = AotiRunner.__new__(AotiRunner)  # no compiled package needed to check the inputs
    runner.graph, runner.device = model_specs(exported.tiny_model())["mask_classifier"], torch.device("cpu")
    runner.package = lambda *args: pytest.fail("the package must not see invalid inputs")
    with pytest.raises(ValueError, match=r"mask_classifier: missing inputs \['synonym_mask'\]"):
        runner({"res5": torch.zeros(1, 320, 2, 2), "pred_masks": torch.zeros(1, 20, 16, 16),
                "text_embeddings": torch.zeros(2, 1, 64)})
    with pytest.raises(ValueError, match=r"pred_masks: dim 1 is 7, expected 20"):
        runner({"res5": torch.zeros(1, 320, 2, 2), "pred_masks": torch.zeros(1, 7, 16, 16),
                "text_embeddings": torch.zeros(2, 1, 64), "synonym_mask": torch.ones(2, 1, dtype=torch.bool)})


def test_sha256_mismatch_is_refused(text_only, tmp_path):
    from cmpf.manifest import ArtifactError

    directory = exported.copy_of(text_only, tmp_path)
    onnx_file = directory / "text_encoder.fp32.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-10] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"text_encoder.fp32.onnx: sha256 .* does not match .*`cmpf export --model"):
        graph_artifact(directory, "text_encoder", "onnx")
    onnx_file.unlink()
    with pytest.raises(ArtifactError, match="text_encoder.fp32.onnx: missing; re-export with `cmpf export"):
        graph_artifact(directory, "text_encoder", "onnx")


def test_manifest_missing_or_incompatible(text_only, tmp_path):
    from cmpf.manifest import ArtifactError

    with pytest.raises(ArtifactError, match=r"no manifest.json; export it with `cmpf export --model PRESET"):
        read_manifest(tmp_path)
    with pytest.raises(ArtifactError, match="no such directory"):
        load_artifacts(tmp_path / "nowhere", "onnxruntime")
    directory = exported.copy_of(text_only, tmp_path)
    _edit_manifest(directory, lambda m: m.update(format_version=0))
    with pytest.raises(ArtifactError, match=r"format version 0, this cmpf reads version 2; re-export with `cmpf"):
        read_manifest(directory)


def test_partial_export_and_missing_format(text_only):
    from cmpf.manifest import ArtifactError

    with pytest.raises(ArtifactError, match=r"graphs \['clip_image_encoder', .*\] were not exported"):
        load_artifacts(text_only, "onnxruntime")
    with pytest.raises(ArtifactError, match="was not exported as aoti .* --format aoti"):
        graph_artifact(text_only, "text_encoder", "aoti")
    with pytest.raises(ArtifactError, match="no graph 'decoder'"):
        graph_artifact(text_only, "decoder", "onnx")


def test_spec_change_is_refused(text_only, tmp_path):
    from cmpf.manifest import ArtifactError

    directory = exported.copy_of(text_only, tmp_path)
    _edit_manifest(directory, lambda m: m["spec_args"].update(embed_dim=32))
    with pytest.raises(ArtifactError, match="other tensor specs"):
        load_artifacts(directory, "onnxruntime")


def test_load_runner_backends(text_only):
    from cmpf.runtime import load_runner
    from cmpf.manifest import ArtifactError

    artifact = graph_artifact(text_only, "text_encoder", "onnx")
    with pytest.raises(ValueError, match="unknown backend 'tflite'; choose one of torch, onnxruntime, aoti"):
        load_runner("tflite", artifact)
    with pytest.raises(ArtifactError, match="a onnx file cannot run on the tensorrt backend .it needs engine"):
        load_runner("tensorrt", artifact)
    with pytest.raises(ArtifactError, match="a onnx file cannot run on the aoti backend"):
        load_runner("aoti", artifact)
    package = dataclasses.replace(artifact, path=artifact.path.with_suffix(".pt2"), format="aoti", device="cpu")
    with pytest.raises(ArtifactError, match="compiled for cpu, asked to run on cuda; .* --device cuda"):
        load_runner("aoti", package, "cuda")
    torch_runner = load_runner("torch", artifact)  # the model rebuilt from the manifest + weights.pth
    tokens = torch.randint(1, 1000, (2, 77))
    tokens[:, 10] = 49407
    onnx_runner = load_runner("onnxruntime", artifact)
    torch.testing.assert_close(onnx_runner({"token_ids": tokens})["text_features"],
                               torch_runner({"token_ids": tokens})["text_features"], rtol=1e-4, atol=1e-5)


def test_torch_backend_needs_recorded_weights(text_only, tmp_path):
    from cmpf.manifest import ArtifactError
    from cmpf.runtime.torch_runner import model_from_manifest

    directory = exported.copy_of(text_only, tmp_path)
    _edit_manifest(directory, lambda m: m.update(weights=None))
    with pytest.raises(ArtifactError, match="no weights recorded .* --checkpoint CKPT"):
        model_from_manifest(read_manifest(directory))
    ckpt = tmp_path / "elsewhere.pth"
    ckpt.write_bytes(b"not the exported weights")
    _edit_manifest(directory, lambda m: m.update(weights={"path": str(ckpt), "sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match="checkpoint changed since the export"):
        model_from_manifest(read_manifest(directory))


@pytest.mark.parametrize("preset", ["tiny", "tiny-fcclip", "frozenseg-rn50x64"])
def test_model_config_round_trip(preset):
    from cmpf.config import InferenceOptions, default_options, get_config
    from cmpf.manifest import model_config_from_json

    cfg = get_config(preset)
    stored = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert model_config_from_json(stored) == cfg
    with pytest.raises(ValueError, match=r"fields this cmpf does not know: \['future_field'\]"):
        model_config_from_json({**stored, "future_field": 1})
    options = default_options(cfg).with_seen((("cat", "kitty"), ("sky",)))
    assert InferenceOptions.from_json(json.loads(json.dumps(options.to_json()))) == options


def test_cli_reports_artifact_errors_in_one_line(tmp_path, capsys):
    from cmpf.cli import main
    from cmpf.sample import SAMPLE_IMAGE

    code = main(["run", str(SAMPLE_IMAGE), "--classes", "cat", "--artifacts", str(tmp_path), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "cmpf export" in err[0]


def test_import_hygiene_without_onnxruntime():
    """`import cmpf.runtime` and `cmpf --help` work when onnxruntime (and onnx) cannot be imported."""
    code = (
        "import sys; sys.modules['onnxruntime'] = None; sys.modules['onnx'] = None; sys.modules['tensorrt'] = None\n"
        "import cmpf, cmpf.runtime, cmpf.manifest, cmpf.bench.stages, cmpf.predictor, cmpf.cli\n"
        "assert 'cmpf.model' not in sys.modules, 'the runtime must not import the model code'\n"
        "import cmpf.export.api, cmpf.demo\n"
        "from cmpf.cli import main\n"
        "for cmd in (['--help'], ['export', '--help'], ['bench', '--help'], ['parity', '--help'],\n"
        "            ['demo', '--help']):\n"
        "    try:\n"
        "        main(cmd)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (cmd, e.code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_external_data_is_written_hashed_and_loaded(tmp_path):
    """`--external-data` (automatic above 2 GB): weights in <file>.data, listed and hashed in the manifest,
    loaded by ONNX Runtime beside the model, and refused when altered."""
    from cmpf.tolerances import REL, rel_error

    from cmpf.export.api import ExportConfig, export_model
    from cmpf.runtime import load_runner
    from cmpf.manifest import ArtifactError
    from cmpf.runtime.torch_runner import TorchRunner
    from cmpf.text import tokenize

    model = exported.tiny_model()
    with pytest.warns(UserWarning, match="random weights"):
        export_model(ExportConfig("tiny", str(tmp_path), graphs=("text_encoder",), external_data=True), model=model,
                     progress=False)
    entry = read_manifest(tmp_path).graphs["text_encoder"].files["onnx"]
    assert entry.external_data == ("text_encoder.fp32.onnx.data",)
    data_file = tmp_path / "text_encoder.fp32.onnx.data"
    assert data_file.stat().st_size > (tmp_path / "text_encoder.fp32.onnx").stat().st_size
    runner = load_runner("onnxruntime", graph_artifact(tmp_path, "text_encoder", "onnx"))
    feed = {"token_ids": tokenize(["a photo of a cat.", "a dog"])}
    got, want = runner(feed)["text_features"], TorchRunner(model, "text_encoder")(feed)["text_features"]
    assert rel_error(got, want) < REL[("onnxruntime", "fp32")]
    data = bytearray(data_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    data_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"text_encoder.fp32.onnx.data: sha256 .* does not match"):
        graph_artifact(tmp_path, "text_encoder", "onnx")
