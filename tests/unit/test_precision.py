"""``cmpf quantize``: fp16 / bf16 casts and int8 Q/DQ graphs of the tiny export, on ONNX Runtime (bf16: OpenVINO).

One quantised copy of the session's tiny export per precision (module fixtures); each test reads
the files and the manifest, or runs them, and compares with the fp32 files on inputs captured from
the real pipeline, against the tolerance table's rows.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import exported

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _vocabulary():
    from cmpf.vocabulary import parse_class_list

    return parse_class_list(exported.CLASSES)


GRAPHS = ("text_encoder", "clip_image_encoder", "sam_image_encoder", "decoder", "mask_classifier")


def _images(directory: Path, n: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = rng.integers(48, 97, size=2)
        base = rng.integers(0, 256, size=(1, 1, 3))
        noise = rng.integers(-40, 40, size=(h, w, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(directory / f"im{i}.png")
    return directory


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    """Crops and flips of the sample image the parity test segments: calibration like the deployment."""
    from PIL import Image

    from cmpf.sample import SAMPLE_IMAGE

    out = tmp_path_factory.mktemp("calib")
    source = Image.open(SAMPLE_IMAGE).convert("RGB")
    w, h = source.size
    for i, (x, y) in enumerate([(0, 0), (w // 5, 0), (0, h // 5), (w // 5, h // 5)]):
        crop = source.crop((x, y, x + 4 * w // 5, y + 4 * h // 5))
        (crop.transpose(Image.FLIP_LEFT_RIGHT) if i % 2 else crop).save(out / f"calib{i}.png")
    return out


def _quantized(tmp_path_factory, precision: str, calib: Path | None) -> Path:
    from cmpf.precision.api import QuantizeConfig, quantize_artifacts

    directory = exported.copy_of(exported.tiny_export(("onnx",)), tmp_path_factory.mktemp(precision.replace("=", "_")))
    quantize_artifacts(QuantizeConfig(str(directory), precision, calib_images=str(calib) if calib else None,
                                      vocabulary=_vocabulary()), progress=False)
    return directory


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory):
    return _quantized(tmp_path_factory, "fp16", None)


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    pytest.importorskip("openvino", reason="bf16 files are checked on OpenVINO (pip install 'cmpf[openvino]')")
    return _quantized(tmp_path_factory, ",".join(f"{g}=bf16" for g in GRAPHS), None)


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory, calib):
    return _quantized(tmp_path_factory, ",".join(f"{g}=int8" for g in GRAPHS), calib)


def _types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_fp16_graph_has_casts_half_weights_and_fp32_keep_list(fp16_dir):
    from cmpf.manifest import Manifest
    from cmpf.precision.fp16 import keep_ops

    manifest = Manifest.read(fp16_dir)
    for graph in manifest.graphs:
        artifact = manifest.artifact(graph, "onnx", "fp16")
        model = onnx.load(str(artifact.path))
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("Cast") > 0, graph
        halves = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        assert len(halves) > 0, graph
        types = _types(model)
        kept = [n for n in model.graph.node if n.op_type in keep_ops(graph)]
        assert kept, graph
        for node in kept:  # the keep-list's ops compute in fp32 (or their integer type), never fp16
            assert all(types.get(o) != onnx.TensorProto.FLOAT16 for o in node.output), (graph, node.name)
            assert any(types.get(o) == onnx.TensorProto.FLOAT for o in node.output) or node.op_type.startswith(
                "Reduce"), (graph, node.name)
        # the interface is the spec's: fp32 in, fp32 out
        assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in model.graph.input)
        assert artifact.recipe["keep_fp32_ops"] == list(keep_ops(graph))
        assert artifact.recipe["source_sha256"] == manifest.files[f"{graph}.fp32.onnx"]


def test_bf16_graph_retypes_the_fp16_rewrite_with_weights_rounded_from_fp32(bf16_dir):
    """The bf16 file is the fp16 file's structure in bfloat16: no float16 left, the keep-list in fp32, the
    interface fp32, and each weight the fp32 original rounded to bf16 (not the fp16 converter's clamped value)."""
    import ml_dtypes
    from onnx import numpy_helper

    from cmpf.manifest import Manifest
    from cmpf.precision.fp16 import keep_ops

    manifest = Manifest.read(bf16_dir)
    BF16, FP16 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16
    for graph in GRAPHS:
        artifact = manifest.artifact(graph, "onnx", "bf16")
        model = onnx.load(str(artifact.path))
        fp32 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(manifest.artifact(graph, "onnx").path))
                .graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
        casts = [n for n in model.graph.node if n.op_type == "Cast"]
        assert any(a.i == BF16 for n in casts for a in n.attribute if a.name == "to"), graph
        assert not any(a.i == FP16 for n in casts for a in n.attribute if a.name == "to"), graph
        halves = [i for i in model.graph.initializer if i.data_type == BF16]
        assert halves and not any(i.data_type == FP16 for i in model.graph.initializer), graph
        for init in halves:
            got = np.frombuffer(init.raw_data, dtype=ml_dtypes.bfloat16).reshape(init.dims)
            np.testing.assert_array_equal(got, fp32[init.name].astype(ml_dtypes.bfloat16), err_msg=init.name)
        types = _types(model)
        assert FP16 not in types.values(), graph
        kept = [n for n in model.graph.node if n.op_type in keep_ops(graph)]
        assert kept and all(types.get(o) != BF16 for n in kept for o in n.output), graph
        assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in model.graph.input
                   if i.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, BF16, FP16))
        assert artifact.recipe["check_runtime"].startswith("openvino "), artifact.recipe
        assert artifact.recipe["tool"].startswith("cmpf.precision.bf16 over onnxruntime.transformers.float16")


def test_int8_graph_is_symmetric_qdq_with_per_channel_weights(int8_dir):
    from cmpf.manifest import Manifest
    from cmpf.precision.qdq import output_heads, qdq_facts

    manifest = Manifest.read(int8_dir)
    for graph in GRAPHS:
        artifact = manifest.artifact(graph, "onnx", "int8")
        model = onnx.load(str(artifact.path))
        facts = qdq_facts(model)
        assert facts["quantize_linear"] > 0 and facts["dequantize_linear"] >= facts["quantize_linear"], graph
        assert facts["nonzero_zero_points"] == 0, graph
        assert facts["per_channel_scales"] > 0, graph
        inits = {i.name for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
                assert node.input[2] in inits  # constant zero points (checked 0 above)
        fp32 = onnx.load(str(manifest.artifact(graph, "onnx").path))
        heads = set(output_heads(fp32))
        assert heads and heads <= set(artifact.recipe["excluded_nodes"]), graph
        assert artifact.recipe["calibration"]["images"] == 4
        assert len(artifact.recipe["calibration"]["sha256"]) == 64


@pytest.mark.parametrize("backend, precision", [("onnxruntime", "fp16"), ("openvino", "fp16"),
                                                ("onnxruntime", "int8"), ("openvino", "int8"), ("openvino", "bf16")])
def test_reduced_graphs_within_their_tolerance_rows(precision, backend, request):
    """Each graph's outputs on the pipeline's own inputs: the fp32 file on ONNX Runtime against the reduced
    file on ONNX Runtime and on OpenVINO (which runs the same casts and Q/DQ files, int8 kernels included).

    The image is 256×320, run without resize: no padding. In a padded border column, the CLIP features
    come from LayerNorms of near-constant vectors, which amplify fp16 rounding (res5 9e-2 there).
    """
    from cmpf.bench.parity import capture_graph_inputs, graph_parity
    from cmpf.predictor import ModelSource, load_predictor
    from cmpf.preprocess import load_image
    from cmpf.sample import SAMPLE_IMAGE

    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino backend needs openvino (pip install 'cmpf[openvino]')")
    directory = request.getfixturevalue(f"{precision}_dir")
    if precision == "bf16" and not _has_bf16_kernels():
        pytest.skip("this CPU has no bf16 kernels (AVX-512 BF16 or AMX): OpenVINO would run the bf16 files in fp32")
    fp32 = load_predictor(ModelSource(artifacts=str(directory)), "onnxruntime")
    low = load_predictor(ModelSource(artifacts=str(directory), precision=precision), backend)
    vocabulary = _vocabulary()
    image = torch.nn.functional.interpolate(load_image(SAMPLE_IMAGE)[None].float(), size=(256, 320))[0].byte()
    options = dataclasses.replace(fp32.options, resize=False)
    inputs = capture_graph_inputs(fp32.runners, [image], vocabulary, fp32.cfg, options)
    rows = graph_parity(fp32.runners, {g: low.runners[g] for g in inputs}, inputs, precision)
    assert {r.backend for r in rows} == {backend}
    assert rows and all(r.ok for r in rows), [(r.graph, r.output, r.rel_error, r.tolerance) for r in rows if not r.ok]
    assert max(r.rel_error for r in rows) > 0  # they did run the reduced files


def _has_bf16_kernels() -> bool:
    from cmpf.runtime.openvino_runner import has_bf16_kernels

    return has_bf16_kernels()


def test_bf16_files_on_onnxruntime_are_refused_in_one_line(bf16_dir, tmp_path, capsys):
    from cmpf.cli import main
    from cmpf.sample import SAMPLE_IMAGE

    rc = main(["run", "--artifacts", str(bf16_dir), "--precision", "bf16", str(SAMPLE_IMAGE), "--classes",
               exported.CLASSES, "--out", str(tmp_path / "out"), "--no-progress"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "no bf16 kernels" in last and "--backend openvino" in last, last
    assert not (tmp_path / "out").exists()


def test_run_cli_with_precision_and_mixed_plan(int8_dir, fp16_dir, tmp_path):
    from cmpf.cli import main
    from cmpf.sample import SAMPLE_IMAGE
    from cmpf.manifest import Manifest

    out = tmp_path / "out"
    assert main(["run", "--artifacts", str(int8_dir), "--precision", "decoder=int8", str(SAMPLE_IMAGE),
                 "--classes", exported.CLASSES,
                 "--out", str(out)]) == 0
    assert any(out.iterdir())
    plan = Manifest.read(int8_dir).runtime_plan("onnx", "int8")
    assert plan["sam_mask_decoder"] == "fp32" and plan["decoder"] == "int8"  # int8 where it exists
    assert main(["run", "--artifacts", str(fp16_dir), "--precision", "int8", str(SAMPLE_IMAGE), "--classes", exported.CLASSES,
                 "--out", str(tmp_path / "o2")]) == 2  # no graph has int8 files there


def test_int8_on_a_cpu_without_int8_units_warns_once(int8_dir, tmp_path, monkeypatch):
    """On a CPU without VNNI / AMX, int8 files are no faster and less exact (u8×s8 products saturate): loading
    them says so, once; the same files on a VNNI CPU, 7-bit-weight files and fp32 files load silently."""
    import warnings

    from cmpf import cpu
    from cmpf.manifest import Manifest, variant_key
    from cmpf.runtime import load_runners

    manifest = Manifest.read(int8_dir)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(cpu, "CPUINFO", cpuinfo)

    def warned(text: str, precision: str | None) -> list[str]:
        cpuinfo.write_text(text)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            load_runners(manifest, "onnxruntime", precision=precision)
        return [str(w.message) for w in record if "VNNI" in str(w.message)]

    epyc = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma\n"
    xeon = epyc.replace("AMD EPYC", "Intel Xeon").replace("avx2", "avx2 avx512f avx512_vnni")
    [message] = warned(epyc, "decoder=int8")
    assert message.startswith("--precision int8 on AMD EPYC: no VNNI or AMX") and message.rstrip(")").endswith(
        "lists the CPU's units") and "run fp32" in message and "\n" not in message
    assert warned(xeon, "decoder=int8") == [] and warned(epyc, None) == [] and warned("", "int8") == []
    files = manifest.graphs["decoder"].files
    key = variant_key("onnx", "int8")
    files[key] = dataclasses.replace(files[key], recipe={**files[key].recipe, "weight_bits": 7})
    assert warned(epyc, "decoder=int8") == []  # `cmpf quantize --reduce-range`: 7-bit weights cannot saturate


def _listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name == "manifest.json"} | {
        "names": "\n".join(sorted(p.name for p in directory.iterdir())).encode()}


@pytest.mark.parametrize("args, message", [
    (["--precision", "int4"], "unknown precision 'int4'"),
    (["--precision", "decoder=fp8"], "fp8: ONNX Runtime 1.30's quantiser writes fp8 graphs its CPU provider cannot"),
    (["--precision", "fp32"], "nothing to do"),
    (["--precision", "int8"], "int8 needs calibration images"),
    (["--precision", "decoder=int8", "--calib-images", "{empty}"], "0 image.s.*at least 4"),
    (["--precision", "decoder=int8", "--calib-images", "{few}"], "2 image.s.*at least 4"),
    (["--precision", "decoder=int8", "--calib-images", "{broken}"], "im9.png"),
    (["--precision", "nosuch=int8"], "no graph 'nosuch'"),
    (["--precision", "decoder=int8", "--calib-images", "{few}", "--calib-method", "mse"], "invalid choice"),
])
def test_bad_input_one_line_nothing_written(args, message, tmp_path, capsys, calib):
    from cmpf.cli import main

    directory = exported.copy_of(exported.tiny_export(("onnx",)), tmp_path)
    (tmp_path / "empty").mkdir()
    _images(tmp_path / "few", 2)
    broken = _images(tmp_path / "broken", 4)
    (broken / "im9.png").write_bytes(b"\x89PNG not really")
    args = [a.format(empty=tmp_path / "empty", few=tmp_path / "few", broken=broken) for a in args]
    before = _listing(directory)
    try:
        rc = main(["quantize", "--artifacts", str(directory), "--classes", exported.CLASSES, *args])
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message and __import__("re").search(message, err), err
    assert "Traceback" not in err
    assert _listing(directory) == before


def test_calibration_takes_a_given_text_classifier_and_never_runs_the_text_encoder(calib, tmp_path):
    from cmpf.errors import InputError
    from cmpf.precision.api import QuantizeConfig, quantize_artifacts
    from cmpf.precision.calibration import calibration_set, capture_feeds
    from cmpf.predictor import ModelSource, load_predictor

    directory = exported.tiny_export(("onnx",))
    predictor = load_predictor(ModelSource(artifacts=str(directory)), "onnxruntime")
    vocabulary = _vocabulary()
    text = predictor.text_cache.get(vocabulary)

    def refuse(inputs):
        raise AssertionError("the text encoder ran")

    runners = {**predictor.runners, "text_encoder": refuse}
    feeds = capture_feeds(runners, calibration_set(str(calib)), vocabulary, predictor.cfg, predictor.options,
                          {"decoder"}, progress=False, text=text)
    assert len(feeds["decoder"]) == 4
    assert np.array_equal(feeds["decoder"][0]["text_embeddings"], text.embeddings.numpy())
    copy = exported.copy_of(directory, tmp_path / "a")
    before = sorted(p.name for p in copy.iterdir())
    with pytest.raises(InputError, match="text_encoder=int8 is calibrated on the vocabulary's prompts"):
        quantize_artifacts(QuantizeConfig(str(copy), "text_encoder=int8,decoder=int8", calib_images=str(calib),
                                          vocabulary=vocabulary, text=text), progress=False)
    assert sorted(p.name for p in copy.iterdir()) == before


def _tiny_sam_and_feeds(n: int) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """The session's tiny SAM encoder file and ``n`` seeded normal feeds for it."""
    src = exported.artifact(exported.tiny_export(("onnx",)), "sam_image_encoder", "onnx").path
    model = onnx.load(str(src))
    dims = [[d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    rng = np.random.default_rng(0)
    return src, [{i.name: rng.normal(size=shape).astype(np.float32) for i, shape in zip(model.graph.input, dims)}
                 for _ in range(n)]


def test_calibration_records_only_the_qdq_inputs_and_writes_the_same_graph(tmp_path, monkeypatch):
    """ONNX Runtime's calibrators record every input and output of the quantised op types (attention's
    activation×activation logits too: out of memory on 24 GB for SAM ViT-B at 1024²); cmpf records only the
    tensors that get Q/DQ, and the file is the one the full recording gives."""
    import contextlib

    from onnxruntime.quantization.calibrate import CalibraterBase

    from cmpf.precision import qdq

    src, feeds = _tiny_sam_and_feeds(2)
    model = onnx.load(str(src))
    recorded = []

    def watched(restrict):
        @contextlib.contextmanager
        def context(tensors):  # what the calibrator ends up recording, with or without the restriction
            with (qdq_context(tensors) if restrict else contextlib.nullcontext()):
                select = CalibraterBase.select_tensors_to_calibrate

                def spy(self, m):
                    found = select(self, m)
                    recorded.append(found[0])
                    return found

                CalibraterBase.select_tensors_to_calibrate = spy
                try:
                    yield
                finally:
                    CalibraterBase.select_tensors_to_calibrate = select
        return context

    qdq_context = qdq._calibrating_only
    monkeypatch.setattr(qdq, "_calibrating_only", watched(True))
    qdq.quantize(src, tmp_path / "only.onnx", feeds)
    monkeypatch.setattr(qdq, "_calibrating_only", watched(False))
    qdq.quantize(src, tmp_path / "all.onnx", feeds)
    only, everything = recorded
    assert only == qdq.calibrated_tensors(model, qdq.weight_ops(model)) & everything
    softmax = {o for n in model.graph.node if n.op_type == "Softmax" for o in n.output}
    assert softmax & everything and not softmax & only  # attention's probabilities are no longer recorded
    a, b = onnx.load(str(tmp_path / "only.onnx")), onnx.load(str(tmp_path / "all.onnx"))
    assert [(n.op_type, list(n.input)) for n in a.graph.node] == [(n.op_type, list(n.input)) for n in b.graph.node]
    values = {i.name: onnx.numpy_helper.to_array(i) for i in b.graph.initializer}
    assert all(np.array_equal(onnx.numpy_helper.to_array(i), values[i.name]) for i in a.graph.initializer)


def test_reduce_range_weights_fit_7_bits_and_the_int8_kernels_compute_their_qdq_math(tmp_path):
    """``--reduce-range``: weights in [-64, 63] (8-bit ones use the full [-127, 127]), recorded in the recipe;
    with them ONNX Runtime's int8 kernels give what the Q/DQ math gives (run in fp32, optimisations off), on any
    x86 CPU: the products cannot saturate (on an AVX2 CPU 8-bit weights do: benchmarks/int8_saturation.py)."""
    import onnxruntime as ort

    from cmpf.precision import qdq

    src, feeds = _tiny_sam_and_feeds(3)
    reference = ort.InferenceSession(str(src)).run(None, feeds[-1])[0]

    def error(path: Path, optimize: bool) -> float:
        options = ort.SessionOptions()
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        out = ort.InferenceSession(str(path), options).run(None, feeds[-1])[0]
        return float(np.linalg.norm(out - reference) / np.linalg.norm(reference))

    largest = {}
    for bits, reduce in ((8, False), (7, True)):
        dst = tmp_path / f"w{bits}.onnx"
        assert qdq.quantize(src, dst, feeds[:2], reduce_range=reduce)["weight_bits"] == bits
        weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(dst)).graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and t.dims]
        largest[bits] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert largest == {8: 127, 7: 64}
    kernels, math = error(tmp_path / "w7.onnx", True), error(tmp_path / "w7.onnx", False)
    assert 0 < kernels < 1.1 * math, (kernels, math)


def test_reduce_range_is_a_quantize_flag_and_part_of_the_recorded_command():
    from cmpf.cli import build_parser
    from cmpf.precision.api import QuantizeConfig

    argv = ["quantize", "--artifacts", "a", "--precision", "int8", "--calib-images", "c", "--reduce-range"]
    assert build_parser(argv).parse_args(argv).reduce_range
    command = QuantizeConfig("a", "int8", calib_images="c", reduce_range=True).command({"decoder": "int8"})
    assert command.endswith("--calib-images c --calib-method minmax --reduce-range")
    assert "--reduce-range" not in QuantizeConfig("a", "int8", calib_images="c").command({"decoder": "int8"})
