"""Mask pooling: the area-normalised mean of a feature map over each binarised mask.

Consumes features (B, C, H, W) and mask logits (B, Q, h, w); produces (B, Q, C). The logits are
bilinearly resized to (H, W) (align_corners=False) when the sizes differ, binarised at > 0 and
normalised by their pixel count + 1e-8 (FC-CLIP / FrozenSeg ``MaskPooling``); the mask is
treated as a constant (no gradient flows into the mask logits).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def mask_pooling_ref(x: torch.Tensor, mask_logits: torch.Tensor, upcast: bool = False) -> torch.Tensor:
    """Reference mask pooling.

    Args:
        x: (B, C, H, W) features.
        mask_logits: (B, Q, h, w) mask logits (any size; resized to (H, W)).
        upcast: compute in float32.
    Returns:
        (B, Q, C) pooled features.
    """
    if upcast:
        x, mask_logits = x.float(), mask_logits.float()
    if mask_logits.shape[-2:] != x.shape[-2:]:
        mask_logits = F.interpolate(mask_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    mask = mask_logits.detach() > 0
    # the area in float32, at least 1: equal to the official area + 1e-8 for every non-empty mask (the
    # 1e-8 is below float32's resolution at 1) and 0 instead of 0/0 for an empty one, in fp16 too and
    # in exported graphs (the ONNX export of "area + 1e-8" lost the 1e-8: an empty SAM mask gave NaN)
    denom = mask.sum(dim=(-1, -2), keepdim=True, dtype=torch.float32).clamp_min(1.0)
    return torch.einsum("bchw,bqhw->bqc", x, (mask.float() / denom).to(x.dtype))


# --------------------------------------------------------------------------------------------------
# Triton kernels. Triton is imported on first use (``_build_kernels``), never at module import.
# --------------------------------------------------------------------------------------------------

triton = tl = None  # set by _build_kernels()

_TARGET_PROGRAMS = 264  # about two waves on a 132-SM H100/H200; a constant, so no device query


@functools.lru_cache(maxsize=None)
def _build_kernels():
    global triton, tl
    from cmpf.kernels._triton import import_triton

    triton, tl = import_triton()

    @triton.jit
    def _mask_pooling_kernel(
        # pointers
        x_ptr,  # (B, C, H, W) features
        logit_ptr,  # (B, Q, HI, WI) mask logits
        acc_ptr,  # (SPLITS, B, Q, C) fp32 partial masked sums
        cnt_ptr,  # (SPLITS, B, Q) fp32 partial mask areas
        # sizes
        Q, C, H, W, HI, WI, SPLITS, PIX_PER_SPLIT, scale_h, scale_w,
        # strides
        stride_xb, stride_xc, stride_xh, stride_xw,
        stride_lb, stride_lq, stride_lh, stride_lw,
        # meta
        BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
        RESIZE: tl.constexpr,  # performance: logits already at (H, W) are read directly, no 4-tap gather
    ):
        pid_q = tl.program_id(0)
        pid_c = tl.program_id(1)
        pid_bs = tl.program_id(2)
        b = pid_bs // SPLITS
        split = pid_bs % SPLITS
        offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        q_valid = offs_q < Q
        c_valid = offs_c < C
        x_base = x_ptr + b * stride_xb + offs_c[None, :] * stride_xc
        l_base = logit_ptr + b * stride_lb + offs_q[:, None] * stride_lq

        acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
        cnt = tl.zeros([BLOCK_Q], dtype=tl.float32)
        p_end = tl.minimum((split + 1) * PIX_PER_SPLIT, H * W)
        for p0 in range(split * PIX_PER_SPLIT, p_end, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            p_valid = offs_p < p_end
            oy = offs_p // W
            ox = offs_p % W
            lmask = q_valid[:, None] & p_valid[None, :]
            if RESIZE:
                # F.interpolate(bilinear, align_corners=False): src = max(scale * (dst + 0.5) - 0.5, 0)
                sy = tl.maximum(scale_h * (oy.to(tl.float32) + 0.5) - 0.5, 0.0)
                sx = tl.maximum(scale_w * (ox.to(tl.float32) + 0.5) - 0.5, 0.0)
                y0 = sy.to(tl.int32)  # floor, since sy >= 0
                x0 = sx.to(tl.int32)
                y1 = tl.where(y0 < HI - 1, y0 + 1, y0)
                x1 = tl.where(x0 < WI - 1, x0 + 1, x0)
                ly1 = sy - y0.to(tl.float32)
                lx1 = sx - x0.to(tl.float32)
                ly0 = 1.0 - ly1
                lx0 = 1.0 - lx1
                row0 = l_base + (y0 * stride_lh)[None, :]
                row1 = l_base + (y1 * stride_lh)[None, :]
                v00 = tl.load(row0 + (x0 * stride_lw)[None, :], mask=lmask, other=0.0).to(tl.float32)
                v01 = tl.load(row0 + (x1 * stride_lw)[None, :], mask=lmask, other=0.0).to(tl.float32)
                v10 = tl.load(row1 + (x0 * stride_lw)[None, :], mask=lmask, other=0.0).to(tl.float32)
                v11 = tl.load(row1 + (x1 * stride_lw)[None, :], mask=lmask, other=0.0).to(tl.float32)
                val = ly0[None, :] * (lx0[None, :] * v00 + lx1[None, :] * v01) + ly1[None, :] * (
                    lx0[None, :] * v10 + lx1[None, :] * v11
                )
            else:
                val = tl.load(l_base + (oy * stride_lh + ox * stride_lw)[None, :], mask=lmask, other=0.0)
            on = (val > 0) & lmask  # the binary mask tile exists only in registers
            cnt += tl.sum(on.to(tl.float32), axis=1)
            xt = tl.load(
                x_base + (oy * stride_xh + ox * stride_xw)[:, None],
                mask=p_valid[:, None] & c_valid[None, :], other=0.0,
            )
            # 0/1 is exact in every float dtype, so the dot runs in the feature dtype (fp32 accumulation);
            # fp32 features use 3xTF32, which keeps fp32 accuracy on tensor cores
            acc = tl.dot(on.to(xt.dtype), xt, acc, input_precision="tf32x3")
        part = split * (tl.num_programs(2) // SPLITS) + b  # row (split, b) of the (SPLITS, B, ...) partials
        tl.store(
            acc_ptr + ((part * Q + offs_q[:, None]) * C + offs_c[None, :]),
            acc, mask=q_valid[:, None] & c_valid[None, :],
        )
        if pid_c == 0:
            tl.store(cnt_ptr + part * Q + offs_q, cnt, mask=q_valid)

    @triton.jit
    def _mask_pooling_finish_kernel(
        # pointers
        acc_ptr, cnt_ptr,  # partials from _mask_pooling_kernel
        out_ptr,  # (B, Q, C), contiguous, feature dtype
        # sizes
        B, Q, C, SPLITS,
        # meta
        BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        pid_q = tl.program_id(0)
        pid_c = tl.program_id(1)
        b = tl.program_id(2)
        offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (offs_q < Q)[:, None] & (offs_c < C)[None, :]
        acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
        cnt = tl.zeros([BLOCK_Q], dtype=tl.float32)
        for s in range(0, SPLITS):
            part = s * B + b
            acc += tl.load(acc_ptr + (part * Q + offs_q[:, None]) * C + offs_c[None, :], mask=mask, other=0.0)
            cnt += tl.load(cnt_ptr + part * Q + offs_q, mask=offs_q < Q, other=0.0)
        out = acc / (cnt + 1e-8)[:, None]
        tl.store(out_ptr + (b * Q + offs_q[:, None]) * C + offs_c[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)

    return _mask_pooling_kernel, _mask_pooling_finish_kernel


def mask_pooling_triton(x: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Fused Triton mask pooling; same contract as ``mask_pooling_ref``.

    Shapes: x (B, C, H, W); mask_logits (B, Q, h, w) of any size. Each program bilinearly resamples
    its logits tile on the fly, binarises it and multiplies it into the features, so the resized
    mask is never written to memory. Pixels are split over several programs when B * Q * C alone
    cannot fill the GPU; a second kernel sums the partials and divides by area + 1e-8.
    Returns (B, Q, C) in x's dtype.
    """
    from torch.library import wrap_triton

    from cmpf.kernels._triton import check_device, launch_context

    pool_kernel, finish_kernel = _build_kernels()
    assert x.dim() == 4 and mask_logits.dim() == 4, "x must be (B, C, H, W) and mask_logits (B, Q, h, w)"
    bsz, chans, height, width = x.shape
    _, nq, h_in, w_in = mask_logits.shape
    assert mask_logits.shape[0] == bsz, f"batch mismatch: {x.shape} vs {mask_logits.shape}"
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {x.dtype}"
    assert mask_logits.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {mask_logits.dtype}"
    assert min(bsz, chans, height, width, nq, h_in, w_in) > 0, "empty input"
    check_device(x, mask_logits)

    block_q = 64 if nq > 32 else 32 if nq > 16 else 16
    block_c = 128 if chans > 64 else 64 if chans > 32 else 32
    # sizes from sm_90 compiles (registers / shared memory, no spills): 3xTF32 fp32 tiles need twice the
    # shared memory, so fp32 takes half the pixels per step and 2 pipeline stages (< 100 KB instead of 295 KB)
    block_p, num_stages = (32, 2) if x.dtype == torch.float32 else (64, 3)
    num_qb = triton.cdiv(nq, block_q)
    num_cb = triton.cdiv(chans, block_c)
    n_pix = height * width
    splits = max(1, min(triton.cdiv(_TARGET_PROGRAMS, num_qb * num_cb * bsz), triton.cdiv(n_pix, 4 * block_p)))
    pix_per_split = triton.cdiv(triton.cdiv(n_pix, splits), block_p) * block_p
    splits = triton.cdiv(n_pix, pix_per_split)
    acc = torch.empty((splits, bsz, nq, chans), dtype=torch.float32, device=x.device)
    cnt = torch.empty((splits, bsz, nq), dtype=torch.float32, device=x.device)
    out = torch.empty((bsz, nq, chans), dtype=x.dtype, device=x.device)
    with launch_context(x):
        wrap_triton(pool_kernel)[(num_qb, num_cb, bsz * splits)](
            x, mask_logits, acc, cnt,
            nq, chans, height, width, h_in, w_in, splits, pix_per_split,
            float(h_in) / height, float(w_in) / width,
            *x.stride(), *mask_logits.stride(),
            BLOCK_Q=block_q, BLOCK_C=block_c, BLOCK_P=block_p, RESIZE=(h_in, w_in) != (height, width),
            num_warps=8, num_stages=num_stages,
        )
        wrap_triton(finish_kernel)[(num_qb, num_cb, bsz)](
            acc, cnt, out, bsz, nq, chans, splits, BLOCK_Q=block_q, BLOCK_C=block_c,
        )
    return out


def _mask_pooling_fake(x, mask_logits):
    return x.new_empty((x.shape[0], mask_logits.shape[1], x.shape[1]))


_OP = None  # the registered ``cmpf::mask_pooling`` op, set by register_op()


@torch.compiler.disable  # registration is a side effect; under torch.compile call it once beforehand
def register_op():
    """Register ``cmpf::mask_pooling`` (once) so torch.compile / torch.export keep the kernel.

    Idempotent. The dispatch function calls it on first use; call it before
    ``torch.compile(fullgraph=True)`` so the compiled graph finds the op already registered.
    """
    global _OP
    if _OP is None:
        op = torch.library.triton_op("cmpf::mask_pooling", mask_pooling_triton, mutates_args=())
        # explicit fake: the automatic one would run the kernel under TRITON_INTERPRET=1
        op.register_fake(_mask_pooling_fake)
        _OP = op
    return _OP


def mask_pooling(x: torch.Tensor, mask_logits: torch.Tensor, impl: str = "torch") -> torch.Tensor:
    """Mask pooling; ``impl`` is "torch" (reference) or "triton" (fused kernel)."""
    if impl == "torch":
        return mask_pooling_ref(x, mask_logits)
    if impl == "triton":
        return (_OP if _OP is not None else register_op())(x, mask_logits)
    raise ValueError(f"unknown mask-pooling impl {impl!r} (expected 'torch' or 'triton')")
