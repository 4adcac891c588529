"""``cmpf triton-repo``: every config.pbtxt parses with Triton's own ``model_config.proto`` classes and says
what the graph specs say; with Python-backend graph models the repository serves (slow: seven stubs)."""

from __future__ import annotations

from pathlib import Path

import pytest

import exported

m = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] ('cmpf[serve]')")


def _parse(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), m.ModelConfig())


@pytest.fixture(scope="module")
def artifacts() -> Path:
    return exported.tiny_export(("onnx",))


@pytest.mark.parametrize("graph_backend", ["onnxruntime", "python"])
def test_every_config_parses_and_follows_the_specs(artifacts, tmp_path, capsys, graph_backend):
    from cmpf.cli import main
    from cmpf.manifest import Manifest
    from cmpf.serving.protocol import MODEL_NAME

    repo = tmp_path / "repo"
    assert main(["triton-repo", "--artifacts", str(artifacts), "--out", str(repo), "--graph-backend", graph_backend,
                 "--max-batch", "3", "--instances", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    manifest = Manifest.read(artifacts)
    configs = {p.parent.name: _parse(p) for p in repo.glob("*/config.pbtxt")}
    assert set(configs) == set(manifest.graphs) | {MODEL_NAME}
    for graph, entry in manifest.graphs.items():
        config, spec = configs[graph], entry.spec
        batched = config.max_batch_size == 3
        assert batched == (graph in ("clip_image_encoder", "sam_image_encoder")) or config.max_batch_size == 0
        for tensors, specs in ((config.input, spec.inputs), (config.output, spec.outputs)):
            assert [t.name for t in tensors] == [s.name for s in specs]
            for t, s in zip(tensors, specs):
                dims = s.dims[1:] if batched else s.dims
                assert list(t.dims) == [d if isinstance(d, int) else -1 for d in dims], (graph, t.name)
                assert m.DataType.Name(t.data_type) == {"float32": "TYPE_FP32", "int64": "TYPE_INT64",
                                                         "bool": "TYPE_BOOL"}[s.dtype]
        assert [(g.kind, g.count) for g in config.instance_group] == [(m.ModelInstanceGroup.KIND_CPU, 2)]
        if graph_backend == "onnxruntime":
            assert config.platform == "onnxruntime_onnx"
            onnx = manifest.artifact(graph, "onnx").path
            assert (repo / graph / "1" / "model.onnx").read_bytes() == onnx.read_bytes()
        else:
            assert config.backend == "python" and (repo / graph / "1" / "model.py").is_file()
    segment = configs[MODEL_NAME]
    assert segment.backend == "python" and segment.max_batch_size == 3 and segment.HasField("dynamic_batching")
    assert segment.parameters["runners"].string_value == "bls"
    assert Manifest.read(repo / MODEL_NAME / "1" / "artifacts").graphs.keys() == manifest.graphs.keys()


def test_refuses_missing_engines_and_a_used_out(artifacts, tmp_path):
    from cmpf.errors import InputError
    from cmpf.serving.triton_repo import RepoConfig, write_triton_repo

    with pytest.raises(InputError, match="no TensorRT engine; build it with `cmpf build"):
        write_triton_repo(RepoConfig(str(artifacts), str(tmp_path / "trt"), "tensorrt"))
    assert not (tmp_path / "trt").exists()  # nothing half-written
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(InputError, match="not an empty directory"):
        RepoConfig(str(artifacts), str(tmp_path / "used"))


@pytest.mark.slow
def test_repository_with_python_graph_models_serves_what_cmpf_run_writes(artifacts, tmp_path):
    """The BLS chain end to end on the tritonserver here (it has the Python backend only, so the graph
    models are Python-backend models running cmpf's ONNX Runtime runner)."""
    import numpy as np
    from PIL import Image
    from test_serve import files, free_ports

    from cmpf.cli import main
    from cmpf.serving.repository import ServeConfig
    from cmpf.serving.server import TritonServer

    image = tmp_path / "images" / "7.png"
    image.parent.mkdir()
    y, x = np.mgrid[:40, :56]
    Image.fromarray((np.stack([x * 4, y * 6, x + y], -1) % 256).astype(np.uint8)).save(image)
    repo = tmp_path / "repo"
    assert main(["triton-repo", "--artifacts", str(artifacts), "--out", str(repo), "--graph-backend", "python"]) == 0
    classes = ["--classes", exported.CLASSES]
    assert main(["run", str(image), "--artifacts", str(artifacts), *classes, "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    http, grpc, metrics = free_ports(3)
    cfg = ServeConfig(str(artifacts), http_port=http, grpc_port=grpc, metrics_port=metrics, startup_timeout_s=300)
    server = TritonServer(cfg, repository=repo)
    try:
        server.start()
        assert main(["client", str(image), "--url", server.http_url, *classes, "--out", str(tmp_path / "client")]) == 0
    finally:
        server.stop()
    assert files(tmp_path / "client") == files(tmp_path / "run")
