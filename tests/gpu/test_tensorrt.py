"""TensorRT on a GPU: ``cmpf build`` of the tiny graphs, the runner against ONNX Runtime (CPU) with the
tolerance table, the refusal of a foreign engine, CUDA-graph replay, the AOT plugins, and the two other
routes (ONNX Runtime's TensorRT execution provider, Torch-TensorRT). Skipped, with the missing piece
named, where TensorRT / Torch-TensorRT / a GPU is absent."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import exported
from cmpf.export.program import TraceSizes, example_inputs
from cmpf.manifest import ArtifactError, Manifest
from cmpf.tolerances import REL, rel_error

pytestmark = [pytest.mark.gpu, pytest.mark.trt,
              pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                                 reason="needs TensorRT >= 10.12 (not installed: pip install 'cmpf[trt]') and a "
                                        "CUDA GPU")]
SMALL = "height=64:128:256,width=64:160:256,batch=1:2:3,num_classes=1:5:8,num_synonyms=1:3:4,num_prompts=1:4:8," \
        "num_points=1:5:8"
SIZES = TraceSizes(batch=2, h32=3, w32=5, num_classes=5, num_synonyms=3, num_prompts=4, num_points=5)
GRAPHS = ("clip_image_encoder", "text_encoder", "decoder", "mask_classifier", "sam_image_encoder")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("tensorrt", reason="needs TensorRT >= 10.12 (pip install 'cmpf[trt]')")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from cmpf.engines.build import EngineConfig, build_engines

    directory = exported.copy_of(exported.tiny_export(("onnx",)), tmp_path_factory.mktemp("trt"))
    cache = directory.parent / "timing.cache"
    build_engines(EngineConfig(str(directory), graphs=GRAPHS, shapes=(SMALL,), timing_cache=str(cache),
                               workspace_gb=2.0))
    return directory


def _reference(directory, graph, inputs):
    from cmpf.runtime.onnxruntime_runner import OnnxRuntimeRunner

    artifact = Manifest.read(directory).artifact(graph, "onnx")
    return OnnxRuntimeRunner(artifact.path, artifact.graph)(inputs)


@pytest.mark.parametrize("graph", GRAPHS)
def test_engines_match_onnxruntime(built, graph):
    from cmpf.runtime import load_runner

    manifest = Manifest.read(built)
    artifact = manifest.artifact(graph, "engine")
    recipe = artifact.recipe
    assert recipe["tensorrt"] and recipe["compute_capability"] and recipe["source_sha256"] == manifest.files[
        f"{graph}.fp32.onnx"]
    runner = load_runner("tensorrt", artifact, "cuda")
    inputs = example_inputs(artifact.graph, SIZES, "cpu", seed=3)
    got = runner({k: v.cuda() for k, v in inputs.items()})
    torch.cuda.synchronize()
    want = _reference(built, graph, inputs)
    for name, ref in want.items():
        assert got[name].is_cuda and got[name].dtype == ref.dtype
        assert rel_error(got[name].cpu(), ref) <= REL[("tensorrt", "fp32")], name


def test_cuda_graph_replay_matches_and_recaptures_per_shape(built):
    from cmpf.runtime.tensorrt_runner import TensorRTRunner

    artifact = Manifest.read(built).artifact("decoder", "engine")
    plain, graphed = TensorRTRunner(artifact, "cuda"), TensorRTRunner(artifact, "cuda", cuda_graphs=True)
    for sizes in (SIZES, TraceSizes(batch=1, h32=4, w32=4, num_classes=3, num_synonyms=2), SIZES):
        inputs = {k: v.cuda() for k, v in example_inputs(artifact.graph, sizes, "cpu", seed=sizes.batch).items()}
        for name, value in graphed(inputs).items():
            torch.testing.assert_close(value, plain(inputs)[name], rtol=1e-5, atol=1e-5)
    assert len(graphed._graphs) == 2


def test_foreign_engines_are_refused_with_the_rebuild_command(built, tmp_path):
    from cmpf.runtime import load_runner

    directory = exported.copy_of(built, tmp_path)
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data["graphs"]["decoder"]["files"]["engine"]["recipe"]["tensorrt"] = "9.0.0.0"
    path.write_text(json.dumps(data))
    artifact = Manifest.read(directory).artifact("decoder", "engine")
    with pytest.raises(ArtifactError, match=r"built by TensorRT 9.0.0.0.*rebuild it with `cmpf build --artifacts "):
        load_runner("tensorrt", artifact, "cuda")


def test_inputs_outside_every_profile_are_refused(built):
    from cmpf.errors import InputError
    from cmpf.runtime import load_runner

    artifact = Manifest.read(built).artifact("clip_image_encoder", "engine")
    runner = load_runner("tensorrt", artifact, "cuda")
    with pytest.raises(InputError, match="outside every optimisation profile"):
        runner({"pixel_values": torch.randn(1, 3, 512, 512, device="cuda")})


def test_timing_cache_is_kept_and_reused(built):
    cache = built.parent / "timing.cache"
    assert cache.is_file() and cache.stat().st_size > 0


def test_aot_plugin_engine_matches_the_references(tmp_path):
    """A network of the three plugin nodes (from the export's translation table), built with the AOT
    implementations and run through TensorRT, against the torch references."""
    pytest.importorskip("tensorrt.plugin", reason="needs TensorRT >= 10.12 with tensorrt.plugin")
    pytest.importorskip("triton", reason="needs triton (the plugins' kernels)")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import tensorrt as trt

    from cmpf.engines.build import network_flags
    from cmpf.engines.plugin_export import translation_table
    from cmpf.engines.plugins import register_tensorrt_plugins
    from cmpf.kernels import mask_pooling as mp
    from cmpf.kernels import masked_attention as ma
    from cmpf.kernels import ms_deform_attn as msda

    class Kernels(torch.nn.Module):
        def forward(self, value, level0, level1, locations, weights, x, logits, q, k, blocked):
            (h0, w0), (h1, w1) = level0.shape[-2:], level1.shape[-2:]
            return (msda.register_op()(value, [h0, w0, h1, w1], locations, weights),
                    mp.mask_pooling(x, logits, impl="triton"), ma.masked_attention(q, k, k, blocked, impl="triton"))

    args = (torch.randn(1, 30, 2, 8), torch.randn(1, 1, 4, 6), torch.randn(1, 1, 2, 3),
            torch.rand(1, 7, 2, 2, 2, 2), torch.rand(1, 7, 2, 2, 2), torch.randn(2, 16, 5, 6),
            torch.randn(2, 3, 10, 12), torch.randn(2, 4, 64, 32), torch.randn(2, 4, 90, 32),
            torch.rand(2, 1, 64, 90) > 0.5)
    with torch.no_grad():
        program = torch.export.export(Kernels(), args, strict=False)
    names = ["value", "level0", "level1", "locations", "weights", "x", "logits", "q", "k", "blocked"]
    onnx_program = torch.onnx.export(program, (), dynamo=True, opset_version=20, input_names=names,
                                     custom_translation_table=translation_table(["masked_attention", "mask_pooling",
                                                                                 "ms_deform_attn"]))
    path = tmp_path / "kernels.onnx"
    onnx_program.save(path)
    register_tensorrt_plugins()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt.NetworkDefinitionCreationFlag, ("plugins",)))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path)), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    engine_bytes = builder.build_serialized_network(network, builder.create_builder_config())
    assert engine_bytes is not None
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(engine_bytes))
    context = engine.create_execution_context()
    feeds = {n: a.cuda().contiguous() for n, a in zip(names, args)}
    outputs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            context.set_tensor_address(name, feeds[name].data_ptr())
        else:
            outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)), device="cuda")
            context.set_tensor_address(name, outputs[name].data_ptr())
    assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    deform = msda.ms_deform_attn_ref(args[0], [(4, 6), (2, 3)], args[3], args[4])
    pooled = mp.mask_pooling_ref(args[5], args[6])
    attended = ma.masked_attention_ref(args[7], args[8], args[8], args[9])
    import onnx

    order = [o.name for o in onnx.load(str(path)).graph.output]
    for value, want in zip((outputs[name] for name in order), (deform, pooled, attended)):
        assert rel_error(value.cpu(), want) <= 1e-3


def test_onnxruntime_tensorrt_provider_matches(built):
    ort = pytest.importorskip("onnxruntime")
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu with its TensorrtExecutionProvider")
    from cmpf.runtime import load_runner

    artifact = Manifest.read(built).artifact("mask_classifier", "onnx")
    runner = load_runner("onnxruntime-tensorrt", artifact, "cuda")
    inputs = example_inputs(artifact.graph, SIZES, "cpu", seed=4)
    got = runner({k: v.cuda() for k, v in inputs.items()})
    for name, ref in _reference(built, "mask_classifier", inputs).items():
        assert rel_error(got[name].cpu(), ref) <= REL[("onnxruntime-tensorrt", "fp32")], name
    assert (artifact.path.parent / ".ort-tensorrt-cache").is_dir()


def test_torch_tensorrt_route_matches(built):
    pytest.importorskip("torch_tensorrt", reason="needs Torch-TensorRT (pip install torch-tensorrt)")
    from cmpf.cli.build import _exported_programs
    from cmpf.engines.build import EngineConfig, build_engines
    from cmpf.runtime import load_runner

    cfg = EngineConfig(str(built), graphs=("mask_classifier",), shapes=(SMALL,), route="torch-tensorrt")
    build_engines(cfg, programs=_exported_programs(cfg))
    artifact = Manifest.read(built).artifact("mask_classifier", "torchtrt")
    runner = load_runner("torch-tensorrt", artifact, "cuda")
    inputs = example_inputs(artifact.graph, SIZES, "cpu", seed=5)
    got = runner({k: v.cuda() for k, v in inputs.items()})
    for name, ref in _reference(built, "mask_classifier", inputs).items():
        assert rel_error(got[name].cpu(), ref) <= REL[("torch-tensorrt", "fp32")], name
