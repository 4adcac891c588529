"""Masked multi-head attention with the Mask2Former rule.

Consumes q (B, H, Lq, D), k / v (B, H, Lk, D) and a boolean ``blocked`` mask (B, H or 1, Lq, Lk)
where True means "this key is hidden from this query"; produces (B, H, Lq, D). A query whose mask
blocks every key attends to all keys (Mask2Former resets such rows; a fully-masked softmax row
would otherwise be NaN in ONNX Runtime and 0 in some torch paths).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch


def masked_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocked: Optional[torch.Tensor],
    upcast: bool = False,
) -> torch.Tensor:
    """Reference: softmax(q k^T / sqrt(D) with blocked keys at -inf) v, fully-blocked rows reset.

    Args:
        q: (B, H, Lq, D) queries.
        k: (B, H, Lk, D) keys.
        v: (B, H, Lk, D) values.
        blocked: (B, H or 1, Lq, Lk) bool, True = key hidden; None = no mask.
        upcast: compute in float32 and return float32 (a reference for low-precision inputs).
    """
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    if blocked is not None:
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
        scores = scores.masked_fill(blocked, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


# --------------------------------------------------------------------------------------------------
# Triton kernels. Triton is imported on first use (``_build_kernels``), never at module import.
# --------------------------------------------------------------------------------------------------

triton = tl = None  # set by _build_kernels()

_TARGET_PROGRAMS = 264  # about two waves on a 132-SM H100/H200; a constant, so no device query
_SUMMARY_TILES = 16  # key tiles per program of the mask-summary kernel


@functools.lru_cache(maxsize=None)
def _build_kernels():
    global triton, tl
    from cmpf.kernels._triton import import_triton

    triton, tl = import_triton()

    @triton.jit
    def _masked_attention_summary_kernel(
        # pointers
        blocked_ptr,  # (B, HM, LQ, LK) uint8, 1 = key hidden
        tile_ptr,  # (B, HM, NUM_QB, NUM_KB) int8: 0 all hidden, 1 all visible, 2 mixed
        row_ptr,  # (B, HM, NUM_KC, LQ) int8: 1 if the query sees a key of that key chunk
        # sizes
        HM, LQ, LK, NUM_KB,
        # strides
        stride_mb, stride_mh, stride_mq, stride_mk,
        # meta
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        TILES_PER_PROGRAM: tl.constexpr,  # performance: key chunks in parallel, not one long loop
    ):
        pid_m = tl.program_id(0)
        pid_kc = tl.program_id(1)
        pid_bh = tl.program_id(2)
        b = pid_bh // HM
        h = pid_bh % HM
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_valid = offs_m < LQ
        base = blocked_ptr + b * stride_mb + h * stride_mh + offs_m[:, None] * stride_mq
        tile_base = tile_ptr + (pid_bh * tl.cdiv(LQ, BLOCK_M) + pid_m) * NUM_KB
        row_any = tl.zeros([BLOCK_M], dtype=tl.int32)
        kb_end = tl.minimum((pid_kc + 1) * TILES_PER_PROGRAM, NUM_KB)
        for kb in range(pid_kc * TILES_PER_PROGRAM, kb_end):
            offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
            valid = m_valid[:, None] & (offs_n < LK)[None, :]
            hidden = tl.load(base + offs_n[None, :] * stride_mk, mask=valid, other=1)
            visible = ((hidden == 0) & valid).to(tl.int32)
            n_visible = tl.sum(tl.sum(visible, axis=1), axis=0)
            n_valid = tl.sum(tl.sum(valid.to(tl.int32), axis=1), axis=0)
            state = tl.where(n_visible == 0, 0, tl.where(n_visible == n_valid, 1, 2))
            tl.store(tile_base + kb, state.to(tl.int8))
            row_any = tl.maximum(row_any, tl.max(visible, axis=1))
        row_out = row_ptr + (pid_bh * tl.num_programs(1) + pid_kc) * LQ + offs_m
        tl.store(row_out, row_any.to(tl.int8), mask=m_valid)

    @triton.jit
    def _masked_attention_kernel(
        # pointers
        q_ptr, k_ptr, v_ptr,  # (B, H, LQ, D), (B, H, LK, D), (B, H, LK, D)
        blocked_ptr,  # (B, H or 1, LQ, LK) uint8 (head stride 0 when shared)
        tile_ptr, row_ptr,  # summaries from _masked_attention_summary_kernel (NUM_KC row partials)
        o_ptr, lse_ptr,  # partial results: (SPLITS, B*H, LQ, D) fp32, (SPLITS, B*H, LQ) fp32
        # sizes
        H, LQ, LK, D, NUM_KB, NUM_KC, KB_PER_SPLIT, qk_scale,
        # strides
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_mb, stride_mh, stride_mq, stride_mk,
        stride_tb, stride_th,  # tile summary (per batch, per head; 0 when the mask is shared)
        stride_rb, stride_rh,  # row summary
        # meta
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        pid_s = tl.program_id(2)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_valid = offs_m < LQ
        # BLOCK_D >= 16 for tl.dot: head dims below that (or not a power of 2) are zero-padded
        d_valid = offs_d < D
        q = tl.load(
            q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
            mask=m_valid[:, None] & d_valid[None, :], other=0.0,
        )
        row_any = tl.zeros([BLOCK_M], dtype=tl.int8)
        for kc in range(0, NUM_KC):
            row_part = row_ptr + b * stride_rb + h * stride_rh + kc * LQ + offs_m
            row_any = tl.maximum(row_any, tl.load(row_part, mask=m_valid, other=1))
        row_any = row_any != 0
        # a query hiding every key sees all keys (Mask2Former), so no tile may be skipped for it
        has_empty_row = tl.min(row_any.to(tl.int32), axis=0) == 0

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        k_base = k_ptr + b * stride_kb + h * stride_kh
        v_base = v_ptr + b * stride_vb + h * stride_vh
        m_base = blocked_ptr + b * stride_mb + h * stride_mh + offs_m[:, None] * stride_mq
        t_base = tile_ptr + b * stride_tb + h * stride_th + pid_m * NUM_KB
        kb_end = tl.minimum((pid_s + 1) * KB_PER_SPLIT, NUM_KB)
        for kb in range(pid_s * KB_PER_SPLIT, kb_end):
            state = tl.load(t_base + kb).to(tl.int32)
            # performance: key tiles hidden from every query of this block are skipped entirely
            if (state != 0) | has_empty_row:
                offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
                n_valid = offs_n < LK
                kt = tl.load(
                    k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                    mask=n_valid[None, :] & d_valid[:, None], other=0.0,
                )
                # fp32 inputs: 3xTF32 keeps fp32 accuracy on tensor cores (ignored for 16-bit inputs)
                s = tl.dot(q, kt, input_precision="tf32x3") * qk_scale
                # performance: only mixed tiles read the mask; uniform tiles take it from the summary
                state_2d = tl.full([BLOCK_M, BLOCK_N], 0, tl.int32) + state
                hidden = tl.load(
                    m_base + offs_n[None, :] * stride_mk,
                    mask=m_valid[:, None] & n_valid[None, :] & (state_2d == 2), other=0,
                ) != 0
                hidden = (hidden | (state_2d == 0)) & row_any[:, None]
                s = tl.where(hidden | (offs_n >= LK)[None, :], float("-inf"), s)
                m_new = tl.maximum(m_i, tl.max(s, axis=1))
                # rows that have seen no visible key yet keep m = -inf; avoid (-inf) - (-inf)
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.exp2(s - m_safe[:, None])
                alpha = tl.exp2(m_i - m_safe)
                l_i = l_i * alpha + tl.sum(p, axis=1)
                v = tl.load(
                    v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=n_valid[:, None] & d_valid[None, :], other=0.0,
                )
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="tf32x3")
                m_i = m_new
        has_key = l_i > 0.0
        o = acc / tl.where(has_key, l_i, 1.0)[:, None]
        lse = tl.where(has_key, m_i + tl.log2(tl.where(has_key, l_i, 1.0)), float("-inf"))
        row = (pid_s * tl.num_programs(1) + pid_bh) * LQ + offs_m
        tl.store(o_ptr + row[:, None] * D + offs_d[None, :], o, mask=m_valid[:, None] & d_valid[None, :])
        tl.store(lse_ptr + row, lse, mask=m_valid)

    @triton.jit
    def _masked_attention_combine_kernel(
        # pointers
        o_ptr, lse_ptr,  # partials, as written by _masked_attention_kernel
        out_ptr,  # (B, H, LQ, D), contiguous, in the input dtype
        # sizes
        BH, LQ, D, SPLITS,
        # meta
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_valid = offs_m < LQ
        mask = m_valid[:, None] & (offs_d < D)[None, :]
        lse_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        for s in range(0, SPLITS):
            lse = tl.load(lse_ptr + (s * BH + pid_bh) * LQ + offs_m, mask=m_valid, other=0.0)
            lse_max = tl.maximum(lse_max, lse)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        w_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        for s in range(0, SPLITS):
            row = (s * BH + pid_bh) * LQ + offs_m
            w = tl.exp2(tl.load(lse_ptr + row, mask=m_valid, other=0.0) - lse_max)
            o = tl.load(o_ptr + row[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
            acc += w[:, None] * o
            w_sum += w
        out = acc / w_sum[:, None]
        tl.store(
            out_ptr + (pid_bh * LQ + offs_m[:, None]) * D + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty), mask=mask,
        )

    return _masked_attention_summary_kernel, _masked_attention_kernel, _masked_attention_combine_kernel


def masked_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocked: Optional[torch.Tensor],
) -> torch.Tensor:
    """Triton masked attention; same contract as ``masked_attention_ref``.

    Shapes: q (B, H, Lq, D); k, v (B, H, Lk, D); blocked bool (B, 1 or H, Lq, Lk) or None (an
    expanded view is fine: its strides are used as they are). Returns (B, H, Lq, D) in q's dtype,
    accumulated in fp32. Key tiles hidden from a whole query block are skipped, and the key range
    is split over several programs (flash-decoding) when B * H * Lq alone cannot fill the GPU.
    """
    from torch.library import wrap_triton

    from cmpf.kernels._triton import check_device, launch_context, next_power_of_2

    summary_kernel, attn_kernel, combine_kernel = _build_kernels()
    assert q.dim() == 4 and k.dim() == 4 and v.dim() == 4, "q, k, v must be (B, H, L, D)"
    bsz, heads, lq, dim = q.shape
    lk = k.shape[2]
    assert k.shape == (bsz, heads, lk, dim) and v.shape == k.shape, f"k/v shapes {k.shape}, {v.shape} vs q {q.shape}"
    assert q.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {q.dtype}"
    assert k.dtype == q.dtype and v.dtype == q.dtype, "q, k, v must share a dtype"
    assert lk > 0 and dim <= 256, f"need Lk > 0 and D <= 256 (got Lk={lk}, D={dim})"
    for t in (q, k, v):
        assert t.stride(-1) == 1, "the last dim of q, k, v must be contiguous"
    check_device(q, k, v)

    # 64 x 32 tiles, 4 warps, 3 stages: ~105 (fp16) / ~170 (fp32) registers on sm_90, no spills. 64 keys
    # spill when the mask's row stride (Lk) is not a multiple of 16 (850, 3400 here): no vector loads
    block_m = 64 if lq > 32 else 32 if lq > 16 else 16
    block_n = 32
    block_d = max(16, next_power_of_2(dim))
    num_qb = triton.cdiv(lq, block_m)
    num_kb = triton.cdiv(lk, block_n)
    device = q.device

    if blocked is not None:
        assert blocked.dtype == torch.bool, "blocked must be a bool mask"
        assert blocked.dim() == 4 and blocked.shape[0] == bsz and blocked.shape[2:] == (lq, lk), (
            f"blocked {tuple(blocked.shape)} must be (B, 1 or H, Lq, Lk) = ({bsz}, 1|{heads}, {lq}, {lk})"
        )
        assert blocked.shape[1] in (1, heads), f"blocked heads {blocked.shape[1]} must be 1 or {heads}"
        check_device(q, blocked)
    mask_u8, tiles, rows = _summarize_mask(blocked, q, lk, block_m, block_n, summary_kernel)
    shared = mask_u8.shape[1] == 1  # one mask for every head (the model's case)

    splits = max(1, min(triton.cdiv(_TARGET_PROGRAMS, num_qb * bsz * heads), num_kb // 4))
    kb_per_split = triton.cdiv(num_kb, splits)
    splits = triton.cdiv(num_kb, kb_per_split)
    o_part = torch.empty((splits, bsz * heads, lq, dim), dtype=torch.float32, device=device)
    lse_part = torch.empty((splits, bsz * heads, lq), dtype=torch.float32, device=device)
    out = torch.empty((bsz, heads, lq, dim), dtype=q.dtype, device=device)
    qk_scale = 1.4426950408889634 / math.sqrt(dim)  # log2(e) / sqrt(D): the kernel uses exp2

    with launch_context(q):
        wrap_triton(attn_kernel)[(num_qb, bsz * heads, splits)](
            q, k, v, mask_u8, tiles, rows, o_part, lse_part,
            heads, lq, lk, dim, num_kb, rows.shape[2], kb_per_split, qk_scale,
            *q.stride(), *k.stride(), *v.stride(),
            mask_u8.stride(0), 0 if shared else mask_u8.stride(1), mask_u8.stride(2), mask_u8.stride(3),
            tiles.stride(0), 0 if shared else tiles.stride(1),
            rows.stride(0), 0 if shared else rows.stride(1),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4, num_stages=3,
        )
        wrap_triton(combine_kernel)[(num_qb, bsz * heads)](
            o_part, lse_part, out,
            bsz * heads, lq, dim, splits,
            BLOCK_M=block_m, BLOCK_D=block_d,
        )
    return out


def _summarize_mask(blocked, q, lk, block_m, block_n, summary_kernel):
    """(uint8 mask view, per-tile states, per-key-chunk row flags) for ``_masked_attention_kernel``."""
    from torch.library import wrap_triton

    from cmpf.kernels._triton import launch_context

    bsz, _, lq, _ = q.shape
    num_qb, num_kb = triton.cdiv(lq, block_m), triton.cdiv(lk, block_n)
    if blocked is None:  # every tile visible, every row has a key: the mask is never read
        mask_u8 = torch.zeros((1, 1, 1, 1), dtype=torch.uint8, device=q.device).expand(bsz, 1, lq, lk)
        tiles = torch.ones((bsz, 1, num_qb, num_kb), dtype=torch.int8, device=q.device)
        return mask_u8, tiles, torch.ones((bsz, 1, 1, lq), dtype=torch.int8, device=q.device)
    mask_u8 = blocked.view(torch.uint8)
    mheads = blocked.shape[1]
    num_kc = triton.cdiv(num_kb, _SUMMARY_TILES)
    tiles = torch.empty((bsz, mheads, num_qb, num_kb), dtype=torch.int8, device=q.device)
    rows = torch.empty((bsz, mheads, num_kc, lq), dtype=torch.int8, device=q.device)
    with launch_context(q):
        wrap_triton(summary_kernel)[(num_qb, num_kc, bsz * mheads)](
            mask_u8, tiles, rows,
            mheads, lq, lk, num_kb,
            *mask_u8.stride(),
            BLOCK_M=block_m, BLOCK_N=block_n, TILES_PER_PROGRAM=_SUMMARY_TILES,
        )
    return mask_u8, tiles, rows


def _masked_attention_fake(q, k, v, blocked):
    return q.new_empty(q.shape)


_OP = None  # the registered ``cmpf::masked_attention`` op, set by register_op()


@torch.compiler.disable  # registration is a side effect; under torch.compile call it once beforehand
def register_op():
    """Register ``cmpf::masked_attention`` (once) so torch.compile / torch.export keep the kernel.

    Idempotent. The dispatch function calls it on first use; call it before
    ``torch.compile(fullgraph=True)`` so the compiled graph finds the op already registered.
    """
    global _OP
    if _OP is None:
        op = torch.library.triton_op("cmpf::masked_attention", masked_attention_triton, mutates_args=())
        # explicit fake: the automatic one would run the kernel under TRITON_INTERPRET=1
        op.register_fake(_masked_attention_fake)
        _OP = op
    return _OP


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocked: Optional[torch.Tensor],
    impl: str = "torch",
) -> torch.Tensor:
    """Masked attention with the Mask2Former rule; ``impl`` is "torch" (reference) or "triton"."""
    if impl == "torch":
        return masked_attention_ref(q, k, v, blocked)
    if impl == "triton":
        return (_OP if _OP is not None else register_op())(q, k, v, blocked)
    raise ValueError(f"unknown masked-attention impl {impl!r} (expected 'torch' or 'triton')")
