"""``cmpf build`` and the TensorRT runners without TensorRT: profiles from the specs, the build plan, the
orchestration with a fake builder (staging, manifest entries, recipe round trip, timing cache), the
refusal logic, and the runners' binding logic against stand-in engines and modules."""

from __future__ import annotations

import ctypes
import enum
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import exported
from cmpf.cli import main
from cmpf.engines import build as B
from cmpf.engines.profiles import DEFAULT_RANGES, DimRange, Profile, parse_shapes, profiles_from, shapes_text
from cmpf.errors import EnvironmentProblem, InputError, MissingDependency
from cmpf.manifest import ArtifactError, Manifest
from cmpf.runtime import load_runner
from cmpf.runtime.ort_tensorrt_runner import (CACHE_DIR_NAME, OrtTensorRTRunner, engine_cache_dir,
                                              tensorrt_provider_options, tensorrt_providers)
from cmpf.runtime.tensorrt_runner import DeviceFacts, EngineRecipe, TensorRTRunner, check_engine, choose_profile
from cmpf.runtime.torch_tensorrt_runner import TorchTensorRTRunner
from cmpf.spec import GraphSpec, TensorSpec


@pytest.fixture()
def artifacts(tmp_path):
    return exported.copy_of(exported.tiny_export(("onnx",)), tmp_path)


# -- profiles -------------------------------------------------------------------------------------------
def test_profile_shapes_follow_the_spec_dims():
    spec = Manifest.read(exported.tiny_export(("onnx",))).graphs["decoder"].spec
    (profile,) = profiles_from(["height=320:640:1344,width=320:960:1344,batch=1:2:4,num_classes=1:150:1000"])
    shapes = profile.shapes(spec)
    assert shapes["res2"] == ((1, 40, 80, 80), (2, 40, 160, 240), (4, 40, 336, 336))  # h4 = height / 4
    assert shapes["res5"] == ((1, 320, 10, 10), (2, 320, 20, 30), (4, 320, 42, 42))
    assert shapes["sam_embedding"] == ((1, 64, 16, 16), (2, 64, 16, 16), (4, 64, 16, 16))  # static dims kept
    synonyms = DEFAULT_RANGES["num_synonyms"]
    assert shapes["synonym_mask"] == ((1, synonyms.min), (150, synonyms.opt), (1000, synonyms.max))
    assert Profile.from_json(profile.to_json()) == profile
    assert profiles_from([shapes_text(profile)]) == (profile,)


def test_shapes_text_is_checked():
    assert parse_shapes("batch=2, num_classes=1:150:1000") == {"batch": DimRange(2, 2, 2),
                                                               "num_classes": DimRange(1, 150, 1000)}
    assert len(profiles_from(["batch=1", "batch=2:4:8"])) == 2 and profiles_from() == profiles_from([])
    for bad, why in (("h32=4", "derived from height"), ("tokens=3", "unknown dim"), ("batch", "NAME=MIN:OPT:MAX"),
                     ("batch=1:2", "NAME=MIN:OPT:MAX"), ("batch=x", "integers"), ("batch=4:2:8", "MIN <= OPT"),
                     ("batch=1,batch=2", "given twice")):
        with pytest.raises(InputError, match=why):
            parse_shapes(bad)
    with pytest.raises(InputError, match="multiple of 32"):
        profiles_from(["height=320:800:1333"])


# -- the plan and the pure pieces of the build ------------------------------------------------------------
def test_plan_picks_sources_profiles_and_names(artifacts):
    manifest = Manifest.read(artifacts)
    cfg = B.EngineConfig(str(artifacts), graphs=("decoder", "text_encoder"), shapes=("batch=1:1:2", "batch=3:4:8"))
    jobs = B.plan_builds(manifest, cfg)
    assert [(j.graph, j.precision, j.name, j.source.path.name) for j in jobs] == [
        ("decoder", "fp32", "decoder.fp32.engine", "decoder.fp32.onnx"),
        ("text_encoder", "fp32", "text_encoder.fp32.engine", "text_encoder.fp32.onnx")]
    assert [p.range_of("batch") for p in jobs[0].profiles] == [DimRange(1, 1, 2), DimRange(3, 4, 8)]
    with pytest.raises(ArtifactError, match="cmpf quantize --artifacts .* --precision decoder=fp16"):
        B.plan_builds(manifest, B.EngineConfig(str(artifacts), precision="fp16", graphs=("decoder",)))
    with pytest.raises(InputError, match="not in"):
        B.plan_builds(manifest, B.EngineConfig(str(artifacts), graphs=("nope",)))
    with pytest.raises(InputError, match="torch-tensorrt builds fp32 or fp16"):
        B.plan_builds(manifest, B.EngineConfig(str(artifacts), precision="int8", route="torch-tensorrt"))


def test_config_checks_and_rebuild_command():
    cfg = B.EngineConfig("art", precision="fp16", shapes=("batch=1:1:4",), timing_cache="t.cache", opt_level=5,
                         plugins=("ms_deform_attn",))
    assert cfg.command(("decoder",), "fp16") == ("cmpf build --artifacts art --precision fp16 --graphs decoder "
                                                "--shapes batch=1:1:4 --timing-cache t.cache --opt-level 5 "
                                                "--plugins ms_deform_attn")
    assert B.EngineConfig("art").command(("decoder",), "fp32") == "cmpf build --artifacts art --graphs decoder"
    for bad in (dict(opt_level=6), dict(workspace_gb=0), dict(plugins=("flash",)), dict(route="onnx"),
                dict(route="torch-tensorrt", plugins=("mask_pooling",))):
        with pytest.raises(InputError):
            B.EngineConfig("art", **bad)


def test_network_flags_and_version_floor():
    class Flag(enum.IntEnum):  # TensorRT's NetworkDefinitionCreationFlag values
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1
        PREFER_AOT_PYTHON_PLUGINS = 2
        PREFER_JIT_PYTHON_PLUGINS = 3

    assert B.network_flags(Flag, ()) == 0b10
    assert B.network_flags(Flag, ("mask_pooling",)) == 0b110
    assert B.workspace_bytes(1.5) == 3 << 29
    for ok in ("10.12.0.36", "10.15.1", "11.5.0.2"):
        B.check_tensorrt_version(ok)
    with pytest.raises(MissingDependency, match=">= 10.12"):
        B.check_tensorrt_version("10.11.0.33")


def test_plugin_nodes_need_plugins():
    B.check_plugins("decoder", set(), B.EngineConfig("a"))
    B.check_plugins("decoder", {"ms_deform_attn"}, B.EngineConfig("a", plugins=("ms_deform_attn", "mask_pooling")))
    with pytest.raises(InputError, match="--plugins mask_pooling,ms_deform_attn"):
        B.check_plugins("decoder", {"ms_deform_attn", "mask_pooling"}, B.EngineConfig("a"))


def test_parser_errors_become_lines():
    err = SimpleNamespace(node_name=lambda: "", node=lambda: 7, node_operator=lambda: "Unique",
                          desc=lambda: "No importer registered\n for op: Unique")
    named = SimpleNamespace(node_name=lambda: "n1", node=lambda: 1, node_operator=lambda: "Resize", desc=lambda: "bad")
    assert B.parser_error_lines([err, named]) == ["node #7 (Unique): No importer registered for op: Unique",
                                                 "n1 (Resize): bad"]


# -- the orchestration, with a fake builder ----------------------------------------------------------------
class FakeBuilder:
    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on

    def __call__(self, job, spec, out, timing_cache):
        if job.graph == self.fail_on:
            raise RuntimeError("builder crashed")
        self.calls.append((job.graph, timing_cache))
        out.write_bytes(b"engine of " + job.graph.encode())
        return B.BuildResult("10.13.0.35", "NVIDIA H200", "9.0", ("a builder warning",), 12.5,
                             (timing_cache or b"") + b"+" + job.graph.encode())


def test_build_writes_engines_and_manifest_entries(artifacts, tmp_path):
    cache = tmp_path / "timing.cache"
    cfg = B.EngineConfig(str(artifacts), graphs=("decoder", "mask_classifier"), timing_cache=str(cache),
                         shapes=("batch=1:1:2",))
    fake = FakeBuilder()
    assert B.build_engines(cfg, builder=fake) == artifacts / "manifest.json"
    assert fake.calls == [("decoder", None), ("mask_classifier", b"+decoder")]  # the cache flows through
    assert cache.read_bytes() == b"+decoder+mask_classifier"
    manifest = Manifest.read(artifacts)
    artifact = manifest.artifact("decoder", "engine")  # hash-checked like every file
    assert artifact.path.read_bytes() == b"engine of decoder" and artifact.device == "cuda"
    recipe = EngineRecipe.from_json(artifact.recipe, artifact.path)
    onnx_sha = manifest.files["decoder.fp32.onnx"]
    assert (recipe.tensorrt, recipe.gpu, recipe.compute_capability, recipe.source, recipe.source_sha256) == (
        "10.13.0.35", "NVIDIA H200", "9.0", "decoder.fp32.onnx", onnx_sha)
    assert recipe.profiles[0]["batch"] == [1, 1, 2] and recipe.warnings == ("a builder warning",)
    assert recipe.builder["strongly_typed"] and recipe.build_seconds == 12.5 and recipe.built_at.endswith("+00:00")
    assert recipe.command == (f"cmpf build --artifacts {artifacts} --graphs decoder --shapes batch=1:1:2 "
                              f"--timing-cache {cache}")
    assert EngineRecipe.from_json(json.loads(json.dumps(recipe.to_json())), "x") == recipe  # JSON round trip
    assert manifest.artifact("decoder", "onnx").path.name == "decoder.fp32.onnx"  # the rest is untouched
    assert main(["doctor", "--onnx", str(manifest.artifact("decoder", "onnx").path)]) == 0


def test_a_failed_build_leaves_the_directory_as_it_was(artifacts):
    before = {p.name: p.read_bytes() for p in artifacts.iterdir() if p.is_file() and p.suffix != ".onnx"}
    with pytest.raises(RuntimeError, match="builder crashed"):
        B.build_engines(B.EngineConfig(str(artifacts), graphs=("decoder", "text_encoder")),
                        builder=FakeBuilder(fail_on="text_encoder"))
    after = {p.name: p.read_bytes() for p in artifacts.iterdir() if p.is_file() and p.suffix != ".onnx"}
    assert after == before and not list(artifacts.parent.glob(".*staging*"))


def test_cli_build_errors_are_one_line(artifacts, capsys):
    assert main(["build", "--artifacts", str(artifacts / "missing")]) == 2
    assert main(["build", "--artifacts", str(artifacts), "--opt-level", "9"]) == 2
    assert main(["build", "--artifacts", str(artifacts), "--shapes", "tokens=4"]) == 2
    code = main(["build", "--artifacts", str(artifacts), "--graphs", "decoder"])
    err = capsys.readouterr().err.strip().splitlines()
    if code == 3:  # no TensorRT here: the missing extra, named
        assert err[-1] == "error: cmpf build needs tensorrt, which is not installed; pip install 'cmpf[trt]'"
    else:  # TensorRT present without a GPU
        assert code in (0, 3), err


# -- refusal logic --------------------------------------------------------------------------------------------
def _recipe(**kw):
    values = dict(tensorrt="10.13.0.35", gpu="NVIDIA H200", compute_capability="9.0", source="decoder.fp32.onnx",
                  source_sha256="ab", precision="fp32", profiles=({"batch": [1, 1, 4]},), built_at="2026-01-01",
                  build_seconds=1.0, builder={}, warnings=(), command="cmpf build --artifacts art --graphs decoder")
    return EngineRecipe(**{**values, **kw})


def test_engines_of_another_tensorrt_or_gpu_are_refused_with_the_rebuild_command():
    recipe = _recipe()
    assert check_engine(recipe, DeviceFacts("10.13.0.35", "NVIDIA H200", "9.0"), "d.engine") == []
    with pytest.raises(ArtifactError) as e:
        check_engine(recipe, DeviceFacts("10.14.1.48", "NVIDIA H200", "9.0"), "d.engine")
    assert str(e.value) == ("d.engine: built by TensorRT 10.13.0.35, this is TensorRT 10.14.1.48 (engines only load "
                            "in the version that built them); rebuild it with `cmpf build --artifacts art --graphs "
                            "decoder`")
    with pytest.raises(ArtifactError, match=r"compute capability 9.0\), this GPU is NVIDIA L4 \(8.9\); rebuild it on "
                                            r"this GPU with `cmpf build --artifacts art --graphs decoder`"):
        check_engine(recipe, DeviceFacts("10.13.0.35", "NVIDIA L4", "8.9"), "d.engine")
    (warning,) = check_engine(recipe, DeviceFacts("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0"), "d.engine")
    assert "same compute capability" in warning and "\n" not in warning
    for bad in (None, {"recipe_version": 0}, {"recipe_version": 1, "tensorrt": "10"}):
        with pytest.raises(ArtifactError, match="cmpf build --artifacts"):
            EngineRecipe.from_json(bad, "art/d.engine")


# -- the TensorRT runner's binding, against a stand-in engine ----------------------------------------------
Mode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
DataType = enum.Enum("DataType", "FLOAT HALF INT64 BOOL")
TOY = GraphSpec("toy", (TensorSpec("x", ("batch", 4)), TensorSpec("keep", ("batch", 4), "bool")),
                (TensorSpec("y", ("batch", 4)), TensorSpec("count", ("batch",), "int64")))


def _view(ptr, shape, ctype, dtype):
    n = int(np.prod(shape))
    return np.frombuffer((ctype * n).from_address(ptr), dtype=dtype).reshape(shape) if n else np.zeros(shape, dtype)


class FakeContext:
    """Reads its inputs and writes its outputs through the raw addresses the runner bound, as TensorRT does."""

    def __init__(self):
        self.shapes, self.addresses, self.profiles = {}, {}, []

    def set_optimization_profile_async(self, index, stream):
        self.profiles.append(index)

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def get_tensor_shape(self, name):
        batch = self.shapes["x"][0]
        return (batch, 4) if name == "y" else (batch,)

    def execute_async_v3(self, stream):
        shape = self.shapes["x"]
        x = _view(self.addresses["x"], shape, ctypes.c_float, np.float32)
        keep = _view(self.addresses["keep"], shape, ctypes.c_bool, np.bool_)
        _view(self.addresses["y"], shape, ctypes.c_float, np.float32)[...] = np.where(keep, 2 * x + 1, 0)
        _view(self.addresses["count"], shape[:1], ctypes.c_int64, np.int64)[...] = keep.sum(1)
        return True


class FakeEngine:
    num_optimization_profiles = 2

    def __init__(self, dtypes=None):
        self.tensors = {"x": (Mode.INPUT, DataType.FLOAT), "keep": (Mode.INPUT, DataType.BOOL),
                        "count": (Mode.OUTPUT, DataType.INT64), "y": (Mode.OUTPUT, DataType.FLOAT), **(dtypes or {})}
        self.context = FakeContext()

    num_io_tensors = property(lambda self: len(self.tensors))

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]

    def get_tensor_profile_shape(self, name, index):
        low, high = ((1, 2), (3, 8))[index]
        return [(low, 4), (high, 4), (high, 4)]

    def create_execution_context(self):
        return self.context


def _toy_runner(engine=None):
    return TensorRTRunner.from_engine(engine or FakeEngine(), TOY, "cpu", input_mode=Mode.INPUT,
                                      command="cmpf build --artifacts art --graphs toy", stream=lambda: 0)


def test_runner_binds_by_name_and_picks_the_profile():
    engine = FakeEngine()
    runner = _toy_runner(engine)
    for batch, profile in ((2, 0), (5, 1), (1, 0)):
        x = torch.randn(batch, 4)
        keep = torch.rand(batch, 4) > 0.5
        out = runner({"keep": keep, "x": x})
        torch.testing.assert_close(out["y"], torch.where(keep, 2 * x + 1, torch.zeros(())))
        assert out["count"].tolist() == keep.sum(1).tolist() and out["count"].dtype == torch.int64
        assert engine.context.profiles[-1] == profile
    assert engine.context.profiles == [0, 1, 0]  # switched only when the shapes moved to another profile
    non_contiguous = torch.randn(4, 2).t()  # bound after .contiguous(): the addresses are right
    keep = torch.ones(2, 4, dtype=torch.bool)
    torch.testing.assert_close(runner({"x": non_contiguous, "keep": keep})["y"], 2 * non_contiguous + 1)
    with pytest.raises(InputError, match=r"outside every optimisation profile .*profile 1: x \(3, 4\)..\(8, 4\).*"
                                         r"rebuild with wider --shapes: `cmpf build --artifacts art --graphs toy`"):
        runner({"x": torch.randn(9, 4), "keep": torch.ones(9, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="missing inputs"):
        runner({"x": torch.randn(2, 4)})


def test_runner_refuses_an_engine_whose_io_differs_from_the_spec():
    with pytest.raises(ArtifactError, match="engine I/O differs from the toy spec .*y: torch.float16"):
        _toy_runner(FakeEngine({"y": (Mode.OUTPUT, DataType.HALF)}))
    assert choose_profile(FakeEngine(), {"x": (3, 4), "keep": (3, 4)}) == 1
    assert choose_profile(FakeEngine(), {"x": (3, 5), "keep": (3, 4)}) is None


def test_tensorrt_backend_needs_tensorrt(artifacts):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        B.build_engines(B.EngineConfig(str(artifacts), graphs=("decoder",)), builder=FakeBuilder())
        artifact = Manifest.read(artifacts).artifact("decoder", "engine")
        with pytest.raises(MissingDependency, match=r"pip install 'cmpf\[trt\]'"):
            load_runner("tensorrt", artifact, "cuda")
    else:
        pytest.skip("TensorRT is installed: the missing-extra message is not reachable")


# -- ONNX Runtime's TensorRT execution provider ------------------------------------------------------------
def test_ort_tensorrt_provider_options(artifacts, tmp_path):
    options = tensorrt_provider_options("int8", 1, tmp_path)
    assert options["device_id"] == "1" and options["trt_engine_cache_path"] == str(tmp_path)
    assert (options["trt_int8_enable"], options["trt_fp16_enable"]) == ("True", "False")
    assert tensorrt_provider_options("fp16", 0, tmp_path)["trt_fp16_enable"] == "True"
    providers = tensorrt_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                                   options, 1)
    assert [p if isinstance(p, str) else p[0] for p in providers] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(EnvironmentProblem, match="TensorrtExecutionProvider"):
        tensorrt_providers(["CPUExecutionProvider"], options, 0)
    artifact = Manifest.read(artifacts).artifact("decoder", "onnx")
    assert engine_cache_dir(artifact.path) == artifacts.resolve() / CACHE_DIR_NAME
    with pytest.raises(InputError, match="CUDA devices"):
        OrtTensorRTRunner(artifact, "cpu")
    import onnxruntime

    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(EnvironmentProblem, match="TensorrtExecutionProvider"):
            load_runner("onnxruntime-tensorrt", artifact, "cuda")


# -- Torch-TensorRT -------------------------------------------------------------------------------------------
def test_torch_tensorrt_settings_and_ranges(artifacts):
    from cmpf.engines.torch_tensorrt import compile_ranges, compile_settings

    manifest = Manifest.read(artifacts)
    (job,) = B.plan_builds(manifest, B.EngineConfig(str(artifacts), graphs=("mask_classifier",), route="torch-tensorrt",
                                                    precision="fp16"))
    assert job.name == "mask_classifier.fp16.ts" and job.source is None
    settings = compile_settings(job, B.EngineConfig(str(artifacts), opt_level=4))
    assert settings["enable_autocast"] and settings["autocast_low_precision_type"] == torch.float16
    assert settings["use_explicit_typing"] and settings["optimization_level"] == 4
    ranges = compile_ranges(job, manifest.graphs["mask_classifier"].spec)
    assert [r[0] for r in ranges] == ["res5", "pred_masks", "text_embeddings", "synonym_mask"]
    assert ranges[-1][-1] == torch.bool and ranges[0][1] == (1, 320, 10, 10)
    two = B.plan_builds(manifest, B.EngineConfig(str(artifacts), graphs=("mask_classifier",), route="torch-tensorrt",
                                                 shapes=("batch=1", "batch=2")))[0]
    with pytest.raises(InputError, match="one optimisation profile"):
        compile_ranges(two, manifest.graphs["mask_classifier"].spec)


def test_torch_tensorrt_runner_binds_positionally():
    class Toy(torch.nn.Module):
        def forward(self, x, keep):
            return torch.where(keep, 2 * x + 1, torch.zeros_like(x)), keep.sum(1)

    runner = TorchTensorRTRunner.from_module(torch.jit.script(Toy()), TOY, "cpu")
    x, keep = torch.randn(3, 4), torch.rand(3, 4) > 0.5
    out = runner({"keep": keep, "x": x})
    assert list(out) == ["y", "count"] and out["count"].tolist() == keep.sum(1).tolist()

    class Short(torch.nn.Module):
        def forward(self, x, keep):
            return x

    with pytest.raises(ArtifactError, match="returns 1 tensors"):
        TorchTensorRTRunner.from_module(torch.jit.script(Short()), TOY, "cpu")({"x": x, "keep": keep})


# -- plugins: AOT kernels, launch plans, PTX, ONNX nodes ----------------------------------------------------
class Sym:
    """A stand-in for TensorRT's ShapeExpr: +, -, * and // with the expression on the left only (it has no
    reflected operators), ``is_constant`` / ``constant_value`` for static dims."""

    def __init__(self, value, static=False):
        self.value, self.static = value, static

    def _op(self, other, f):
        return Sym(f(self.value, other.value if isinstance(other, Sym) else other))

    def __add__(self, o):
        return self._op(o, lambda a, b: a + b)

    def __sub__(self, o):
        return self._op(o, lambda a, b: a - b)

    def __mul__(self, o):
        return self._op(o, lambda a, b: a * b)

    def __floordiv__(self, o):
        return self._op(o, lambda a, b: a // b)

    @property
    def is_constant(self):
        return self.static

    def constant_value(self):
        assert self.static
        return self.value


def _sym_cdiv(a, b):
    if isinstance(a, int) and isinstance(b, int):
        raise ValueError("trtp.cdiv refuses two ints")
    value = lambda x: x.value if isinstance(x, Sym) else x  # noqa: E731
    return Sym(-(-value(a) // value(b)))


def _sym_const(d):
    if isinstance(d, int):
        return d
    if not d.is_constant:
        raise ValueError("dynamic")
    return d.constant_value()


def _dims(shape, static):
    return tuple(Sym(v, i in static) for i, v in enumerate(shape))


@pytest.mark.parametrize("op, shapes, static", [
    ("ms_deform_attn", [(2, 30, 8, 32), (3, 2), (2, 11, 8, 3, 4, 2), (2, 11, 8, 3, 4)], [{2, 3}, {0, 1}, {2, 3, 4, 5},
                                                                                          {2, 3, 4}]),
    ("mask_pooling", [(2, 256, 16, 20), (2, 250, 64, 80)], [{1}, set()]),
    ("masked_attention", [(2, 8, 250, 32), (2, 8, 300, 32), (2, 8, 300, 32), (2, 1, 250, 300)],
     [{1, 3}, {3}, {3}, set()]),
])
def test_plans_evaluate_on_tensorrt_shape_expressions(op, shapes, static):
    from cmpf.engines.plugin_kernels import PLANS

    plain = PLANS[op](*shapes)
    symbolic = PLANS[op](*[_dims(s, st) for s, st in zip(shapes, static)], const=_sym_const, cdiv=_sym_cdiv)
    value = lambda x: x.value if isinstance(x, Sym) else x  # noqa: E731
    assert [value(g) for g in symbolic.grid] == list(plain.grid)
    assert [value(s) for s in symbolic.scalars] == list(plain.scalars)
    assert symbolic.constexprs == plain.constexprs and symbolic.num_warps == plain.num_warps
    with pytest.raises(ValueError, match="dynamic"):  # the dims compiled in must be static in the network
        PLANS[op](*[_dims(s, set()) for s in shapes], const=_sym_const, cdiv=_sym_cdiv)


@pytest.fixture
def triton_interpreter():
    from cmpf.kernels._triton import interpreting, is_triton_available

    if not is_triton_available():
        pytest.skip("triton is not importable; the plugins' kernels are Triton kernels")
    if not interpreting():
        pytest.skip("no GPU here: run with TRITON_INTERPRET=1 (the project's test command sets it)")


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("shapes", [[(5, 7), (3, 4), (2, 2)], [(4, 4)]])
def test_aot_deformable_attention_matches_the_reference(shapes):
    from cmpf.engines.plugin_kernels import launch, ms_deform_attn_plan
    from cmpf.kernels.ms_deform_attn import ms_deform_attn_ref

    n, m, dh, lq, p, levels = 2, 2, 8, 11, 3, len(shapes)
    value = torch.randn(n, sum(h * w for h, w in shapes), m, dh)
    loc, weights = torch.rand(n, lq, m, levels, p, 2) * 1.2 - 0.1, torch.rand(n, lq, m, levels, p)
    out = torch.empty(n, lq, m * dh)
    launch(ms_deform_attn_plan(value.shape, (levels, 2), loc.shape, weights.shape),
           [value, torch.tensor(shapes, dtype=torch.int32), loc, weights], [out])  # TensorRT's argument order
    torch.testing.assert_close(out, ms_deform_attn_ref(value, shapes, loc, weights), rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("logit_size", [(10, 12), (5, 6), (3, 7)])  # upsampled, same size, downsampled
def test_aot_mask_pooling_matches_the_reference(dtype, logit_size):
    from cmpf.engines.plugin_kernels import launch, mask_pooling_plan
    from cmpf.kernels.mask_pooling import mask_pooling_ref

    x, logits = torch.randn(2, 40, 5, 6, dtype=dtype), torch.randn(2, 20, *logit_size, dtype=dtype)
    logits[0, 1] = -1  # an empty mask pools to 0
    out = torch.empty(2, 20, 40, dtype=dtype)
    launch(mask_pooling_plan(x.shape, logits.shape, dtype=str(dtype).removeprefix("torch.")), [x, logits], [out])
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out, mask_pooling_ref(x, logits, upcast=True).to(dtype), **tol)
    assert out[0, 1].abs().max() == 0


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("mask_heads", [1, 4])
def test_aot_masked_attention_matches_the_reference(mask_heads):
    from cmpf.engines.plugin_kernels import launch, masked_attention_plan
    from cmpf.kernels.masked_attention import masked_attention_ref

    q, k, v = torch.randn(2, 4, 20, 8), torch.randn(2, 4, 37, 8), torch.randn(2, 4, 37, 8)
    blocked = torch.rand(2, mask_heads, 20, 37) > 0.4
    blocked[0, 0, 3] = True  # a query hiding every key sees them all (Mask2Former)
    out = torch.empty_like(q)
    launch(masked_attention_plan(q.shape, k.shape, v.shape, blocked.shape), [q, k, v, blocked.view(torch.int8)], [out])
    torch.testing.assert_close(out, masked_attention_ref(q, k, v, blocked), rtol=1e-5, atol=1e-5)


def test_ptx_entry_is_trimmed_to_tensorrts_arguments():
    from cmpf.engines.plugin_kernels import signature, trim_entry_params

    ptx = (".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u32 k_param_1,\n\t.param .u64 k_param_2,\n"
           "\t.param .u64 k_param_3\n)\n{\n\tld.param.u64 %rd1, [k_param_0];\n\tld.param.u32 %r1, [k_param_1];\n}\n")
    trimmed = trim_entry_params(ptx, "k", 2)
    assert "k_param_2" not in trimmed and "k_param_3" not in trimmed and "[k_param_1]" in trimmed
    with pytest.raises(ValueError, match="reads k_param_1"):
        trim_entry_params(ptx, "k", 1)
    with pytest.raises(ValueError, match="has 4 parameters, TensorRT passes 5"):
        trim_entry_params(ptx, "k", 5)
    assert signature(["x", "n", "y", "B"], ["float16"], 1, ["float32"], {"B": 4}) == {
        "x": "*fp16", "n": "i32", "y": "*fp32", "B": "constexpr"}
    with pytest.raises(ValueError, match="do not match"):
        signature(["x", "y", "B"], ["float16"], 1, ["float32"], {"B": 4})


_PTX_SCRIPT = r"""
import re, sys
from cmpf.engines import plugin_kernels as K
plans = [(K.ms_deform_attn_plan((1, 2000, 8, 32), (3, 2), (1, 2000, 8, 3, 4, 2), (1, 2000, 8, 3, 4)),
          ["float32", "int32", "float32", "float32"], ["float32"]),
         (K.mask_pooling_plan((1, 256, 64, 64), (1, 250, 200, 272), dtype="float16"), ["float16"] * 2, ["float16"]),
         (K.masked_attention_plan((1, 8, 250, 32), (1, 8, 3400, 32), (1, 8, 3400, 32), (1, 1, 250, 3400)),
          ["float32"] * 3 + ["bool"], ["float32"])]
for plan, inputs, outputs in plans:
    kernel = K.compile_ptx(plan, inputs, outputs, 90)
    params = re.search(r"\.entry\s+" + kernel.name + r"\s*\(([^)]*)\)", kernel.ptx).group(1).count(".param")
    print(plan.op, params, len(inputs) + len(plan.scalars) + len(outputs), kernel.block_x, kernel.shared_mem,
          ".target sm_90" in kernel.ptx)
"""


@pytest.mark.slow
def test_plugin_kernels_compile_to_ptx_for_sm90_without_a_gpu():
    """The AOT path for real: Triton's compiler (its wheel carries ptxas) builds the PTX TensorRT embeds, with
    exactly the parameters TensorRT passes (~25 s with a cold Triton cache, so opt-in: -m slow). A
    subprocess: a process that imported triton under TRITON_INTERPRET=1 cannot compile."""
    pytest.importorskip("triton", reason="triton is not importable; the plugins' kernels are Triton kernels")
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0")
    result = subprocess.run([sys.executable, "-c", _PTX_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()]
    assert [r[0] for r in rows] == ["ms_deform_attn", "mask_pooling", "masked_attention"]
    for op, params, expected, threads, shared, target in rows:
        assert params == expected and int(threads) % 32 == 0 and int(shared) <= 48 * 1024 and target == "True", op


def test_plugin_export_config():
    from cmpf.config import get_config
    from cmpf.engines.plugin_export import plugin_model_config
    from cmpf.export.api import ExportConfig

    cfg = plugin_model_config(get_config("tiny"), ["ms_deform_attn", "mask_pooling"])
    assert (cfg.deform_attn_impl, cfg.mask_pooling_impl, cfg.attention_impl) == ("triton", "triton", "torch")
    assert plugin_model_config(get_config("tiny"), []) == get_config("tiny")
    export = ExportConfig("tiny", "out", plugins=("mask_pooling",))
    assert export.command().endswith("--plugins mask_pooling")
    with pytest.raises(InputError, match="--format onnx alone"):
        ExportConfig("tiny", "out", formats=("onnx", "aoti"), plugins=("mask_pooling",))
    with pytest.raises(InputError, match="unknown plugins"):
        ExportConfig("tiny", "out", plugins=("flash",))


def test_plugin_registration_needs_tensorrt():
    from cmpf.engines.plugins import PLUGIN_IDS, register_tensorrt_plugins

    try:
        import tensorrt.plugin  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependency, match=r"pip install 'cmpf\[trt\]'"):
            register_tensorrt_plugins()
    else:
        assert register_tensorrt_plugins() == PLUGIN_IDS


def test_exported_kernel_ops_become_plugin_nodes(tmp_path):
    """The three kernels' torch ops in a traced program → cmpf-domain AOT nodes that the lint accepts; the
    deformable attention's level sizes an int32 input computed from the (dynamic) feature-map shapes."""
    import onnx
    from torch.export import Dim

    from cmpf.engines.lint import lint_model
    from cmpf.engines.plugin_export import plugin_nodes, translation_table
    from cmpf.kernels import mask_pooling as mp
    from cmpf.kernels import masked_attention as ma
    from cmpf.kernels import ms_deform_attn as msda

    class Kernels(torch.nn.Module):
        def forward(self, value, level0, level1, locations, weights, x, logits, q, k, blocked):
            (h0, w0), (h1, w1) = level0.shape[-2:], level1.shape[-2:]
            return (msda.register_op()(value, [h0, w0, h1, w1], locations, weights),
                    mp.mask_pooling(x, logits, impl="triton"),
                    ma.masked_attention(q, k, k, blocked, impl="triton"),
                    ma.masked_attention(q, q, q, None, impl="triton"))

    h, w, s, lk = Dim("h32", min=2), Dim("w32", min=2), Dim("s", min=2), Dim("lk", min=2)
    args = (torch.randn(1, 30, 2, 8), torch.randn(1, 1, 4, 6), torch.randn(1, 1, 2, 3), torch.rand(1, 7, 2, 2, 2, 2),
            torch.rand(1, 7, 2, 2, 2), torch.randn(2, 16, 5, 6), torch.randn(2, 3, 10, 12), torch.randn(2, 4, 5, 8),
            torch.randn(2, 4, 9, 8), torch.rand(2, 1, 5, 9) > 0.5)
    dims = ({1: s}, {2: 2 * h, 3: 2 * w}, {2: h, 3: w}, {}, {}, {}, {}, {}, {2: lk}, {3: lk})
    with torch.no_grad():
        program = torch.export.export(Kernels(), args, dynamic_shapes=dims, strict=False)
    onnx_program = torch.onnx.export(program, (), dynamo=True, optimize=True, opset_version=20, verbose=False,
                                     custom_translation_table=translation_table(["masked_attention", "mask_pooling",
                                                                                 "ms_deform_attn"]))
    path = tmp_path / "kernels.onnx"
    onnx_program.save(path)
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path))
    assert plugin_nodes(model) == ["ms_deform_attn", "mask_pooling", "masked_attention"]  # self-attention: plain ops
    assert ("cmpf", 1) in [(o.domain, o.version) for o in model.opset_import]
    for node in model.graph.node:
        if node.domain == "cmpf":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs == {"plugin_namespace": b"cmpf", "aot": 1}
    deform = next(n for n in model.graph.node if n.op_type == "ms_deform_attn")
    assert deform.input[1] not in [i.name for i in model.graph.input]  # computed from the shapes in the graph
    assert not [f for f in lint_model(path) if f.op.startswith("cmpf::")]


def test_untraceable_plugins_are_refused_before_the_export():
    from cmpf.engines.plugin_export import check_traceable

    check_traceable(["masked_attention", "mask_pooling"])  # nothing to probe
    try:
        check_traceable(["ms_deform_attn"])
    except InputError as e:  # until cmpf.kernels.ms_deform_attn keeps symbolic level sizes
        assert str(e).startswith("--plugins ms_deform_attn: ") and "\n" not in str(e)


# -- the TensorRT-calling layer, against a stand-in tensorrt module -------------------------------------------
def _fake_tensorrt(parse_ok=True, build_ok=True):
    """The parts of the tensorrt module ``cmpf.engines.tensorrt_build`` calls, recording the calls."""
    calls = []
    Severity = enum.Enum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE")

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity

    class Cache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+tuned"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", pool, size))

        def create_timing_cache(self, data):
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("timing_cache", cache.data, ignore_mismatch))
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, profile):
            calls.append(("profile", dict(profile.shapes)))
            return 0

        def __setattr__(self, name, value):
            if name == "builder_optimization_level":
                calls.append(("opt_level", value))
            object.__setattr__(self, name, value)

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class Network:
        def __init__(self, flags):
            calls.append(("flags", flags))
            self.names = []

        num_inputs = property(lambda self: len(self.names))

        def get_input(self, i):
            return SimpleNamespace(name=self.names[i])

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0 if parse_ok else 2

        def parse_from_file(self, path):
            import onnx

            calls.append(("parse", Path(path).name))
            self.network.names = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
            return parse_ok

        def get_error(self, i):
            return SimpleNamespace(node_name=lambda: f"n{i}", node=lambda: i, node_operator=lambda: "Unique",
                                   desc=lambda: "No importer registered for op: Unique")

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            self.logger.log(Severity.WARNING, "weights  of layer x\\n were clipped")
            self.logger.log(Severity.INFO, "chatter")
            if not build_ok:
                self.logger.log(Severity.ERROR, "out of memory")
                return None
            return memoryview(b"serialized plan")

    Flag = enum.IntEnum("NetworkDefinitionCreationFlag", "STRONGLY_TYPED PREFER_AOT_PYTHON_PLUGINS", start=1)
    trt = SimpleNamespace(__version__="10.13.0.35", ILogger=ILogger, Builder=Builder, OnnxParser=OnnxParser,
                          NetworkDefinitionCreationFlag=Flag, MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"))
    return trt, calls


@pytest.fixture
def fake_gpu(monkeypatch):
    import contextlib

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")


def test_tensorrt_layer_builds_a_strongly_typed_network_with_the_profiles(artifacts, tmp_path, fake_gpu):
    from cmpf.engines.tensorrt_build import build_engine

    manifest = Manifest.read(artifacts)
    cfg = B.EngineConfig(str(artifacts), graphs=("mask_classifier",), shapes=("batch=1:1:2", "batch=3:4:8"),
                         opt_level=5, workspace_gb=0.5)
    (job,) = B.plan_builds(manifest, cfg)
    trt, calls = _fake_tensorrt()
    out = tmp_path / job.name
    result = build_engine(trt, job, manifest.graphs["mask_classifier"].spec, out, b"old cache", cfg)
    assert out.read_bytes() == b"serialized plan"
    assert (result.tensorrt, result.gpu, result.compute_capability) == ("10.13.0.35", "NVIDIA H200", "9.0")
    assert result.warnings == ("weights of layer x\\n were clipped",) and result.timing_cache == b"old cache+tuned"
    assert calls[:2] == [("flags", 1 << 1), ("parse", "mask_classifier.fp32.onnx")]  # strongly typed, no plugins
    assert ("workspace", "workspace", 1 << 29) in calls and ("opt_level", 5) in calls
    assert ("timing_cache", b"old cache", False) in calls
    profiles = [c[1] for c in calls if c[0] == "profile"]
    assert [p["res5"][0][0] for p in profiles] == [1, 3] and [p["res5"][2][0] for p in profiles] == [2, 8]
    assert profiles[0]["pred_masks"] == ((1, 20, 80, 80), (1, 20, 200, 272), (2, 20, 336, 336))
    assert set(profiles[0]) == {"res5", "pred_masks", "text_embeddings", "synonym_mask"}


def test_tensorrt_layer_reports_every_parser_error_and_build_failure(artifacts, tmp_path, fake_gpu):
    from cmpf.engines.tensorrt_build import build_engine
    from cmpf.errors import CheckFailed

    manifest = Manifest.read(artifacts)
    cfg = B.EngineConfig(str(artifacts), graphs=("mask_classifier",))
    (job,) = B.plan_builds(manifest, cfg)
    spec = manifest.graphs["mask_classifier"].spec
    refused = r"refused 2 node\(s\), first n0 \(Unique\): No importer.*cmpf doctor --onnx"
    with pytest.raises(InputError, match=refused) as e:
        build_engine(_fake_tensorrt(parse_ok=False)[0], job, spec, tmp_path / "x.engine", None, cfg)
    assert e.value.details.splitlines() == ["n0 (Unique): No importer registered for op: Unique",
                                            "n1 (Unique): No importer registered for op: Unique"]
    with pytest.raises(CheckFailed, match=r"could not build the engine \(out of memory\)"):
        build_engine(_fake_tensorrt(build_ok=False)[0], job, spec, tmp_path / "x.engine", None, cfg)
    assert not (tmp_path / "x.engine").exists()
