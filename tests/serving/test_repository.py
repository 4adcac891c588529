"""The model repository ``cmpf serve`` writes, read back with Triton's own ``model_config.proto`` classes."""

from __future__ import annotations

import pytest

import exported

m = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] ('cmpf[serve]')")


def _parse(path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), m.ModelConfig())


def test_segment_model_config_parses_and_says_what_serve_asked(tmp_path):
    from cmpf.serving.protocol import INPUTS, MODEL_NAME, OUTPUTS
    from cmpf.serving.repository import ServeConfig, write_segment_model

    artifacts = exported.tiny_export(("onnx",))  # the export the other ONNX tests share
    cfg = ServeConfig(str(artifacts), "openvino", max_batch=8, instances=3, resize=False, max_image_bytes=1000)
    model_dir = write_segment_model(tmp_path, cfg)
    config = _parse(model_dir / "config.pbtxt")
    assert (model_dir / "1" / "model.py").is_file()
    assert config.name == MODEL_NAME and config.backend == "python" and config.max_batch_size == 8
    assert [(t.name, list(t.dims), t.optional) for t in config.input] == [(t.name, list(t.dims), t.optional)
                                                                          for t in INPUTS]
    assert [m.DataType.Name(t.data_type) for t in config.output] == [f"TYPE_{t.dtype}" for t in OUTPUTS]
    assert all(t.allow_ragged_batch for t in config.input)
    assert config.HasField("dynamic_batching")
    assert [(g.kind, g.count) for g in config.instance_group] == [(m.ModelInstanceGroup.KIND_CPU, 3)]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["backend"] == "openvino" and params["resize"] == "false" and params["max_image_bytes"] == "1000"


@pytest.mark.parametrize("kwargs, needle", [
    ({"backend": "torch"}, "the server runs exported artifacts"),
    ({"max_batch": 0}, "--max-batch 0"),
    ({"http_port": 9000, "grpc_port": 9000}, "three different ports"),
])
def test_serve_config_refuses_what_cannot_be_served(kwargs, needle):
    from cmpf.errors import InputError
    from cmpf.serving.repository import ServeConfig

    artifacts = exported.tiny_export(("onnx",))
    with pytest.raises(InputError, match=needle):
        ServeConfig(str(artifacts), **kwargs)
