"""Triton kernels vs their torch references, on CPU through the Triton interpreter (TRITON_INTERPRET=1).

Tolerance rule (flash-attention's): against an fp64 reference, the kernel's error must stay within
2x the torch implementation's own error at the same precision, plus a small atol. Sizes are small
and irregular (not multiples of the block sizes) so the whole file runs in well under a minute.
The same checks at the model's shapes, on CUDA, are in tests/gpu/test_kernels_gpu.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cmpf.kernels import mask_pooling as mp
from cmpf.kernels import masked_attention as ma
from cmpf.kernels import ms_deform_attn as da
from cmpf.kernels._triton import interpreting, is_triton_available

ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
BF16_DOT = pytest.param(
    torch.bfloat16,
    marks=pytest.mark.skip(
        reason="needs a GPU: Triton's interpreter computes tl.dot on bf16 bit patterns; bf16 runs in tests/gpu"
    ),
)


@pytest.fixture
def triton_cpu():
    if not is_triton_available():
        pytest.skip("triton is not importable; the kernels are optional (impl='torch' is the default)")
    if not interpreting():
        pytest.skip("no GPU here: run with TRITON_INTERPRET=1 (the project's test command sets it)")
    torch.manual_seed(0)


needs_triton = pytest.mark.usefixtures("triton_cpu")


def assert_parity(out: torch.Tensor, ref64: torch.Tensor, torch_out: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.dtype == torch_out.dtype and out.shape == torch_out.shape
    err = (out.double() - ref64).abs().max().item()
    torch_err = (torch_out.double() - ref64).abs().max().item()
    assert math.isfinite(torch_err), "the torch path itself is broken here: the rule would compare against inf/nan"
    assert err <= 2 * torch_err + ATOL[dtype], f"kernel error {err:.3g} vs torch error {torch_err:.3g} ({dtype})"


# --- masked attention ---------------------------------------------------------------------------


def _attention_inputs(b, h, lq, lk, d, mask_heads, dtype):
    """Random mask plus the cases the kernel treats specially (its query blocks are 64 rows when Lq > 32)."""
    q, k, v = (torch.randn(b, h, n, d).to(dtype) for n in (lq, lk, lk))
    blocked = torch.rand(b, mask_heads, lq, lk) > 0.3
    rows = torch.arange(lq)[:, None]
    blocked[..., :64] |= rows >= 64  # a key tile hidden from the second query block: skipped
    blocked[..., 64:128] &= rows < 64  # a tile fully visible to it: its mask is not read
    blocked[:, :, 3] = True  # fully blocked rows attend to every key (Mask2Former)
    if mask_heads > 1:
        blocked[:, -1, lq - 1] = True  # ... also next to a hidden tile, in one head only
    return q, k, v, blocked


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, BF16_DOT])
@pytest.mark.parametrize(
    "b,h,lq,lk,d,mask_heads",
    [(2, 2, 37, 150, 8, 1), (1, 3, 70, 200, 32, 3), (1, 2, 100, 530, 16, 1)],
    ids=["tinyD-shared-mask", "per-head-mask", "split-keys"],
)
@needs_triton
def test_masked_attention_parity(b, h, lq, lk, d, mask_heads, dtype):
    q, k, v, blocked = _attention_inputs(b, h, lq, lk, d, mask_heads, dtype)
    out = ma.masked_attention(q, k, v, blocked, impl="triton")
    ref64 = ma.masked_attention_ref(q.double(), k.double(), v.double(), blocked)
    assert_parity(out, ref64, ma.masked_attention(q, k, v, blocked, impl="torch"), dtype)


@needs_triton
def test_masked_attention_all_blocked_and_no_mask():
    q, k, v, _ = _attention_inputs(1, 2, 33, 90, 8, 1, torch.float32)
    everything = torch.ones(1, 1, 33, 90, dtype=torch.bool).expand(1, 2, 33, 90)  # stride-0 heads
    unmasked = ma.masked_attention_ref(q.double(), k.double(), v.double(), None)
    for blocked in (everything, None):
        out = ma.masked_attention(q, k, v, blocked, impl="triton")
        assert_parity(out, unmasked, ma.masked_attention_ref(q, k, v, None), torch.float32)


# --- mask pooling -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, BF16_DOT])
@pytest.mark.parametrize(
    "b,c,size,q,logit_size",
    [(2, 40, (13, 17), 37, (13, 17)), (1, 70, (9, 11), 20, (30, 41)), (2, 33, (19, 21), 5, (7, 6))],
    ids=["same-size", "downsample", "upsample"],
)
@needs_triton
def test_mask_pooling_parity(b, c, size, q, logit_size, dtype):
    x = torch.randn(b, c, *size).to(dtype)
    logits = torch.randn(b, q, *logit_size).to(dtype)
    logits[:, 0] = -1.0  # empty mask -> 0 (area + 1e-8)
    logits[:, 1] = -logits[:, 1].abs()  # empty or nearly so after resizing
    out = mp.mask_pooling(x, logits, impl="triton")
    ref64 = mp.mask_pooling_ref(x.double(), logits.double())
    torch_out = mp.mask_pooling(x, logits, impl="torch")
    assert torch.all(out[:, 0] == 0)
    # the torch path's 1e-8 underflows in fp16, so its empty masks give 0/0: compare the others
    assert_parity(out[:, 2:], ref64[:, 2:], torch_out[:, 2:], dtype)


@needs_triton
def test_mask_pooling_mixed_dtypes():
    x = torch.randn(1, 24, 10, 12).half()
    logits = torch.randn(1, 9, 21, 25)  # fp32 logits, fp16 features
    out = mp.mask_pooling(x, logits, impl="triton")
    ref64 = mp.mask_pooling_ref(x.double(), logits.double())
    assert_parity(out, ref64, mp.mask_pooling_ref(x, logits), torch.float16)


# --- multi-scale deformable attention -----------------------------------------------------------


def _deform_inputs(n, shapes, m, dh, p, lq, dtype):
    levels = len(shapes)
    value = torch.randn(n, sum(h * w for h, w in shapes), m, dh).to(dtype)
    loc = (torch.rand(n, lq, m, levels, p, 2) * 1.4 - 0.2).to(dtype)  # some points outside the map
    weights = torch.randn(n, lq, m, levels * p).softmax(-1).view(n, lq, m, levels, p).to(dtype)
    return value, loc, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "n,shapes,m,dh,p,lq",
    [(2, [(7, 9), (4, 5), (2, 3)], 2, 8, 4, 70), (1, [(11, 13)], 2, 32, 3, 130)],
    ids=["3-levels", "1-level-odd-points"],
)
@needs_triton
def test_ms_deform_attn_parity(n, shapes, m, dh, p, lq, dtype):
    value, loc, weights = _deform_inputs(n, shapes, m, dh, p, lq, dtype)
    out = da.ms_deform_attn(value, shapes, loc, weights, impl="triton")
    ref64 = da.ms_deform_attn_ref(value.double(), shapes, loc.double(), weights.double())
    assert_parity(out, ref64, da.ms_deform_attn(value, shapes, loc, weights, impl="torch"), dtype)


@needs_triton
def test_ms_deform_attn_sam_fold():
    """The SAM branch feeds 3-level buffers to a 1-level call (fold_levels_like_official_kernel)."""
    value, loc, weights = _deform_inputs(2, [(6, 7)], 2, 16, 4, 25, torch.float32)
    _, loc3, weights3 = _deform_inputs(2, [(6, 7)] * 3, 2, 16, 4, 25, torch.float32)
    loc1, weights1 = da.fold_levels_like_official_kernel(loc3, weights3)
    out = da.ms_deform_attn(value, [(6, 7)], loc1, weights1, impl="triton")
    ref64 = da.ms_deform_attn_ref(value.double(), [(6, 7)], loc1.double(), weights1.double())
    assert_parity(out, ref64, da.ms_deform_attn_ref(value, [(6, 7)], loc1, weights1), torch.float32)


# --- registration: torch.export / torch.compile -------------------------------------------------


class _AllOps(torch.nn.Module):
    def forward(self, q, k, v, blocked, x, logits, value, loc, weights):
        return (
            ma.masked_attention(q, k, v, blocked, impl="triton"),
            mp.mask_pooling(x, logits, impl="triton"),
            da.ms_deform_attn(value, [(4, 5), (2, 3)], loc, weights, impl="triton"),
        )


def _all_ops_inputs():
    q, k, v, blocked = _attention_inputs(1, 2, 20, 30, 8, 1, torch.float32)
    value, loc, weights = _deform_inputs(1, [(4, 5), (2, 3)], 2, 8, 2, 10, torch.float32)
    return q, k, v, blocked, torch.randn(1, 16, 5, 6), torch.randn(1, 20, 9, 7), value, loc, weights


@needs_triton
def test_torch_export_keeps_the_ops():
    args = _all_ops_inputs()
    ep = torch.export.export(_AllOps(), args)
    targets = {str(node.target) for node in ep.graph.nodes if node.op == "call_function"}
    assert {"cmpf.masked_attention.default", "cmpf.mask_pooling.default", "cmpf.ms_deform_attn.default"} <= targets
    for got, want in zip(ep.module()(*args), _AllOps()(*args)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@needs_triton
def test_torch_compile_with_opaque_ops():
    """Inductor inlining the kernels (the default decomposition) needs a GPU: under TRITON_INTERPRET=1
    wrap_triton hands back the interpreter, which AOTAutograd would run on FakeTensors. Here the ops stay
    opaque nodes of the compiled graph; tests/gpu checks the inlined path."""
    args = _all_ops_inputs()
    for op_module in (ma, mp, da):
        op_module.register_op()  # before fullgraph compilation
    compiled = torch.compile(_AllOps(), fullgraph=True)
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        outs = compiled(*args)
    for got, want in zip(outs, _AllOps()(*args)):
        torch.testing.assert_close(got, want)


@needs_triton
def test_unknown_impl_is_rejected():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="impl"):
        ma.masked_attention(q, q, q, None, impl="cuda")
    with pytest.raises(ValueError, match="impl"):
        mp.mask_pooling(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), impl="cuda")


# --- import hygiene and TensorRT plugins --------------------------------------------------------

_HYGIENE = textwrap.dedent(
    """
    import sys
    sys.modules["triton"] = None
    sys.modules["tensorrt"] = None
    import torch
    from cmpf.kernels import masked_attention as ma, mask_pooling as mp, ms_deform_attn as da
    from cmpf.engines import plugins as tensorrt_plugins
    from cmpf.kernels._triton import is_triton_available
    assert not is_triton_available()
    q = torch.randn(1, 1, 4, 8)
    assert ma.masked_attention(q, q, q, None).shape == q.shape
    try:
        ma.masked_attention(q, q, q, None, impl="triton")
    except ImportError as exc:
        assert "triton" in str(exc)
    else:
        raise AssertionError("impl='triton' without triton must raise ImportError")
    try:
        tensorrt_plugins.register_tensorrt_plugins()
    except ImportError as exc:
        assert "tensorrt" in str(exc).lower()
    else:
        raise AssertionError("register_tensorrt_plugins() without tensorrt must raise ImportError")
    print("ok")
    """
)


def test_modules_import_without_triton_or_tensorrt():
    result = subprocess.run([sys.executable, "-c", _HYGIENE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.trt
def test_tensorrt_plugins_register():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed; the plugins cannot be registered here")
    from cmpf.engines import plugins as tensorrt_plugins

    names = tensorrt_plugins.register_tensorrt_plugins()
    assert set(names) == {"cmpf::masked_attention", "cmpf::mask_pooling", "cmpf::ms_deform_attn"}


# --- the model end to end -----------------------------------------------------------------------


@pytest.mark.slow
@needs_triton
def test_tiny_model_with_triton_kernels_matches_torch():
    """The ``tiny`` preset with all three kernels selected vs the torch paths (~30 s in the interpreter)."""
    from cmpf.config import get_config
    from cmpf.model import build_model
    from cmpf.text import from_synonym_embeddings

    reference = build_model(get_config("tiny"))
    kernels = build_model(
        get_config("tiny", attention_impl="triton", mask_pooling_impl="triton", deform_attn_impl="triton")
    )
    kernels.load_state_dict(reference.state_dict())
    embed = torch.nn.functional.normalize(torch.randn(7, reference.backbone.embed_dim), dim=-1)
    text = from_synonym_embeddings(embed, [2, 1, 1, 1, 1, 1])
    size = reference.cfg.sam_input_size
    inputs = (torch.randn(1, 3, 64, 96), torch.randn(1, 3, size, size), text, torch.ones(6, dtype=torch.bool))
    with torch.no_grad():
        want, got = reference(*inputs), kernels(*inputs)
    for name in ("pred_logits", "pred_masks", "out_vocab_logits", "mask_cls_logprob"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-4)


# --- the real compiler: sm_90 (Hopper) builds without a GPU -------------------------------------


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_spills():
    """Compile, with the real Triton compiler, exactly what the launchers launch at the model's shapes, for
    sm_90: catches what the interpreter accepts but the compiler rejects, register spills and shared memory
    above the H100/H200 limit. Needs only the triton wheel (ptxas, cuobjdump); ~1-2 min with a cold cache.
    Runs in a subprocess: a process that imported triton under TRITON_INTERPRET=1 cannot compile."""
    pytest.importorskip("triton", reason="triton is not importable")
    env = dict(os.environ, TRITON_INTERPRET="0")
    result = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=900)
    if result.returncode == 3:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def sm90_compile_report() -> list[str]:
    """Record the launchers' kernel launches on CPU tensors, compile each for sm_90; return the problems."""
    import re
    import tempfile

    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    from cmpf.kernels import _triton as helpers

    launches = []

    class _Record:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

    torch.library.wrap_triton = _Record
    helpers.check_device = lambda *tensors: None  # CPU tensors stand in for CUDA ones; nothing runs
    torch.manual_seed(0)
    for dtype in (torch.float16, torch.float32):
        q, k, v = (torch.randn(1, 8, n, 32, dtype=dtype) for n in (250, 3400, 3400))
        ma.masked_attention_triton(q, k, v, torch.rand(1, 1, 250, 3400) > 0.5)
        logits = torch.randn(1, 250, 200, 272, dtype=dtype)
        for hw in ((200, 272), (64, 64)):
            mp.mask_pooling_triton(torch.randn(1, 256, *hw, dtype=dtype), logits)
        value, loc, weights = _deform_inputs(1, [(100, 136), (50, 68), (25, 34)], 8, 32, 4, 100, dtype)
        da.ms_deform_attn_triton(value, [(100, 136), (50, 68), (25, 34)], loc, weights)

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    problems = [] if len(launches) >= 16 else [f"only {len(launches)} launches recorded"]
    for kernel, args, kwargs in launches:
        options = {name: kwargs.pop(name) for name in ("num_warps", "num_stages") if name in kwargs}
        values = dict(zip(kernel.arg_names, args), **kwargs)
        signature, constexprs, attrs = {}, dict(kwargs), {}
        for i, name in enumerate(kernel.arg_names):
            if name in kwargs:
                signature[name] = "constexpr"
                continue
            signature[name], spec = native_specialize_impl(CUDABackend, values[name], False, True, True)
            if signature[name] == "constexpr":
                constexprs[name] = spec
            elif spec == "D":
                attrs[(i,)] = [["tt.divisibility", 16]]
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                                  options=options)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(compiled.asm["cubin"])
            cubin.flush()
            usage = subprocess.run([cuobjdump, "-res-usage", cubin.name], capture_output=True, text=True).stdout
        stack = int(re.search(r"STACK:(\d+)", usage).group(1))
        meta = ", ".join(f"{n}={v}" for n, v in kwargs.items())
        print(f"{kernel.__name__}({meta}) {options}: stack {stack} B, shared {compiled.metadata.shared} B")
        if stack > 0 or compiled.metadata.shared > 227 * 1024:
            problems.append(f"{kernel.__name__}({meta}): stack {stack} B, shared {compiled.metadata.shared} B")
    return problems


if __name__ == "__main__":  # the subprocess of test_kernels_compile_for_sm90_without_spills
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except ImportError as exc:
        print(f"this triton build has no CUDA backend: {exc}")
        sys.exit(3)
    found = sm90_compile_report()
    print("\n".join(found))
    sys.exit(1 if found else 0)
