"""Triton kernels vs their torch references on CUDA, at the model's shapes (ADE 800x1067 padded to 800x1088).

Same rule as tests/parity/test_kernels.py: against an fp64 reference, kernel error <= 2x the torch path's
own error at the same precision + a small atol. Also checks that torch.compile inlines the kernels
(the triton_op decomposition that the CPU interpreter cannot run). Skipped without CUDA / triton.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cmpf.kernels import mask_pooling as mp
from cmpf.kernels import masked_attention as ma
from cmpf.kernels import ms_deform_attn as da

pytestmark = pytest.mark.gpu

ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LEVELS = [(100, 136), (50, 68), (25, 34)]  # stride 8 / 16 / 32 of 800x1088


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("triton", reason="triton is not installed")
    torch.manual_seed(0)
    return torch.device("cuda")


def assert_parity(out, ref64, torch_out, dtype):
    assert out.dtype == torch_out.dtype and out.shape == torch_out.shape
    err = (out.double() - ref64).abs().max().item()
    torch_err = (torch_out.double() - ref64).abs().max().item()
    assert math.isfinite(torch_err), "the torch path itself is broken here: the rule would compare against inf/nan"
    assert err <= 2 * torch_err + ATOL[dtype], f"kernel error {err:.3g} vs torch error {torch_err:.3g} ({dtype})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq,hw,d", [(250, (25, 34), 32), (250, (100, 136), 32), (20, (25, 34), 8)])
def test_masked_attention_official_shapes(cuda, dtype, lq, hw, d):
    lk = hw[0] * hw[1]
    q, k, v = (torch.randn(1, 8, n, d, device=cuda).to(dtype) for n in (lq, lk, lk))
    low = torch.randn(1, lq, hw[0] // 8 + 1, hw[1] // 8 + 1, device=cuda)  # spatially coherent masks
    blocked = (F.interpolate(low, size=hw, mode="bilinear") < 0.5).flatten(2)[:, None]  # shared by the heads
    blocked[:, :, :5] = True  # empty masks: the whole row attends
    out = ma.masked_attention(q, k, v, blocked, impl="triton")
    ref64 = ma.masked_attention_ref(q.double(), k.double(), v.double(), blocked)
    assert_parity(out, ref64, ma.masked_attention_ref(q, k, v, blocked), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("feat_hw", [(200, 272), (64, 64)], ids=["stride4", "sam"])
def test_mask_pooling_official_shapes(cuda, dtype, feat_hw):
    x = torch.randn(1, 256, *feat_hw, device=cuda).to(dtype)
    logits = torch.randn(1, 250, 200, 272, device=cuda).to(dtype)
    logits[:, :3] = -1.0  # empty masks
    out = mp.mask_pooling(x, logits, impl="triton")
    ref64 = mp.mask_pooling_ref(x.double(), logits.double())
    assert torch.all(out[:, :3] == 0)
    # fp16's 1e-8 underflows in the torch path (0/0 for empty masks): compare the other queries
    assert_parity(out[:, 3:], ref64[:, 3:], mp.mask_pooling_ref(x, logits)[:, 3:], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", [LEVELS, [(64, 64)]], ids=["3-levels", "sam-1-level"])
def test_ms_deform_attn_official_shapes(cuda, dtype, levels):
    s = sum(h * w for h, w in levels)
    lq = s if len(levels) > 1 else 4096
    value = torch.randn(1, s, 8, 32, device=cuda).to(dtype)
    loc = (torch.rand(1, lq, 8, len(levels), 4, 2, device=cuda) * 1.2 - 0.1).to(dtype)
    weights = torch.randn(1, lq, 8, len(levels) * 4, device=cuda).softmax(-1).view(loc.shape[:-1]).to(dtype)
    out = da.ms_deform_attn(value, levels, loc, weights, impl="triton")
    ref64 = da.ms_deform_attn_ref(value.double(), levels, loc.double(), weights.double())
    assert_parity(out, ref64, da.ms_deform_attn_ref(value, levels, loc, weights), dtype)


def test_torch_compile_inlines_the_kernels(cuda):
    q, k, v = (torch.randn(1, 8, n, 32, device=cuda, dtype=torch.float16) for n in (250, 850, 850))
    blocked = torch.rand(1, 1, 250, 850, device=cuda) > 0.5
    x, logits = torch.randn(1, 256, 64, 64, device=cuda), torch.randn(1, 250, 200, 272, device=cuda)
    value = torch.randn(1, 850, 8, 32, device=cuda)
    loc, weights = torch.rand(1, 100, 8, 1, 4, 2, device=cuda), torch.rand(1, 100, 8, 1, 4, device=cuda)

    def f(q, k, v, blocked, x, logits, value, loc, weights):
        return (
            ma.masked_attention(q, k, v, blocked, impl="triton") * 2,
            mp.mask_pooling(x, logits, impl="triton") + 1,
            da.ms_deform_attn(value, [(25, 34)], loc, weights, impl="triton").relu(),
        )

    for module in (ma, mp, da):
        module.register_op()
    args = (q, k, v, blocked, x, logits, value, loc, weights)
    for got, want in zip(torch.compile(f, fullgraph=True)(*args), f(*args)):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_torch_export_runs_on_cuda(cuda):
    class Pool(torch.nn.Module):
        def forward(self, x, logits):
            return mp.mask_pooling(x, logits, impl="triton")

    args = (torch.randn(1, 256, 64, 64, device=cuda), torch.randn(1, 250, 200, 272, device=cuda))
    ep = torch.export.export(Pool(), args)
    torch.testing.assert_close(ep.module()(*args), Pool()(*args))
