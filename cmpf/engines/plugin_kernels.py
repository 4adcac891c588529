"""Ahead-of-time kernels of cmpf's TensorRT plugins: the Triton kernels in TensorRT's AOT calling convention.

A TensorRT AOT plugin (``tensorrt.plugin.aot_impl``) launches one compiled kernel, embedded in the
engine as PTX, with its tensor inputs, then the int32 scalars the plugin declares (symbolic
expressions of the shapes, resolved at run time), then its outputs: no strides, no scratch buffers,
one launch. Per plugin this module holds:

1. ``<op>_plan(*dims, const, cdiv)``: the launch as a pure function of the input dims (grid, scalars,
   compile-time constants), evaluated with ints by the tests and with TensorRT's shape expressions by
   ``aot_impl``; ``const`` reads a dim that must be static in the network, ``cdiv`` divides rounding up.
2. its ``@triton.jit`` kernel (built lazily): deformable attention wraps ``cmpf.kernels``' kernel,
   reading the level sizes from an int32 (L, 2) input; mask pooling and masked attention are
   single-launch forms of ``cmpf.kernels``' two- and three-launch kernels (no partial-sum buffers).
3. ``compile_ptx``: ``triton.compile`` for the build GPU, the PTX entry trimmed to TensorRT's arguments.

The same kernels run under ``TRITON_INTERPRET=1`` through ``launch`` (inputs, scalars, outputs in
TensorRT's order), which is how the tests check them against the torch references on a CPU.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

SHARED_MEMORY_LIMIT = 48 * 1024  # dynamic shared memory a launch gets without opting in to more
POINTER_TYPES = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16", "int32": "*i32", "bool": "*i8"}
LOG2E = 1.4426950408889634


def int_cdiv(a, b):
    return -(-a // b)


def int_const(d) -> int:
    return int(d)


@dataclass(frozen=True)
class LaunchPlan:
    op: str
    grid: tuple[Any, Any, Any]  # ints or shape expressions
    scalars: tuple[Any, ...]  # the int32 arguments after the inputs
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int = 2


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def ms_deform_attn_plan(value, spatial_shapes, locations, weights, *, const: Callable = int_const,
                        cdiv: Callable = int_cdiv) -> LaunchPlan:
    """value (N, S, M, Dh), spatial_shapes (L, 2) int32, locations (N, Lq, M, L, P, 2), weights (N, Lq, M, L, P)
    → (N, Lq, M * Dh); M, Dh, L and P are static in the network."""
    n, s, m, dh = value
    lq, levels, points = locations[1], const(locations[3]), const(locations[4])
    m, dh = const(m), const(dh)
    if not 1 <= levels <= 4:
        raise ValueError(f"ms_deform_attn plugin: 1..4 levels, got {levels}")
    block_q = 32  # as cmpf.kernels: 32 queries x 8 warps keep sm_90 free of spills
    return LaunchPlan("ms_deform_attn", (cdiv(lq, block_q), m, n), (s, lq),
                      {"M": m, "DH": dh, "NUM_LEVELS": levels, "NUM_POINTS": points, "BLOCK_Q": block_q,
                       "BLOCK_P": _next_power_of_2(points), "BLOCK_D": _next_power_of_2(dh)}, num_warps=8)


def mask_pooling_plan(x, mask_logits, *, dtype: str = "float32", const: Callable = int_const,
                      cdiv: Callable = int_cdiv) -> LaunchPlan:
    """x (B, C, H, W), mask_logits (B, Q, h, w) → (B, Q, C); C is static in the network."""
    b, c, h, w = x
    q, hi, wi = mask_logits[1], mask_logits[2], mask_logits[3]
    c = const(c)
    block_q, block_c = 64, 128 if c > 64 else 64 if c > 32 else 32
    # fp32 tiles use 3xTF32 dots: half the pixels per step (as cmpf.kernels); one stage keeps the shared memory
    # within the 48 KiB a launch gets without opting in to more
    block_p = 32 if dtype == "float32" else 64
    return LaunchPlan("mask_pooling", (cdiv(q, block_q), int_cdiv(c, block_c), b), (q, h, w, hi, wi),
                      {"C": c, "BLOCK_Q": block_q, "BLOCK_C": block_c, "BLOCK_P": block_p}, num_warps=8, num_stages=1)


def masked_attention_plan(q, k, v, blocked, *, const: Callable = int_const, cdiv: Callable = int_cdiv) -> LaunchPlan:
    """q (B, H, Lq, D), k / v (B, H, Lk, D), blocked bool (B, 1 or H, Lq, Lk) → like q; D is static."""
    b, heads, lq, d = q
    d = const(d)
    if d > 256:
        raise ValueError(f"masked_attention plugin: head dim {d} > 256")
    block_m = 64
    return LaunchPlan("masked_attention", (cdiv(lq, block_m), b * heads, 1), (heads, blocked[1], lq, k[2]),
                      {"D": d, "QK_SCALE": LOG2E / math.sqrt(d), "BLOCK_M": block_m, "BLOCK_N": 32,
                       "BLOCK_D": max(16, _next_power_of_2(d))}, num_warps=4, num_stages=3)


PLANS = {"ms_deform_attn": ms_deform_attn_plan, "mask_pooling": mask_pooling_plan,
         "masked_attention": masked_attention_plan}


# Set by aot_kernels(): the kernels find them as module globals (the interpreter does not keep closures)
triton = tl = _deform = None


@functools.lru_cache(maxsize=None)
def aot_kernels() -> dict[str, Any]:
    """The ``@triton.jit`` kernels, by plugin op (Triton is imported here, on first use)."""
    global triton, tl, _deform
    from cmpf.kernels._triton import import_triton
    from cmpf.kernels.ms_deform_attn import _build_kernels as deform_kernels

    triton, tl = import_triton()
    _deform = deform_kernels()

    @triton.jit
    def ms_deform_attn_aot(
        # inputs: value (N, S, M, DH), level sizes (L, 2) int32, locations (N, LQ, M, L, P, 2), weights (N, LQ, M, L, P)
        value_ptr, shapes_ptr, loc_ptr, weight_ptr,
        # scalars
        S, LQ,
        # output (N, LQ, M * DH)
        out_ptr,
        # meta
        M: tl.constexpr, DH: tl.constexpr, NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # level sizes from the input (they follow the image size, so no attribute could hold them); starts are
        # their running sum; slots past NUM_LEVELS stay 0 and are never read
        h0 = tl.load(shapes_ptr)
        w0 = tl.load(shapes_ptr + 1)
        h1 = h0 * 0
        w1, h2, w2, h3, w3 = h1, h1, h1, h1, h1
        if NUM_LEVELS > 1:
            h1 = tl.load(shapes_ptr + 2)
            w1 = tl.load(shapes_ptr + 3)
        if NUM_LEVELS > 2:
            h2 = tl.load(shapes_ptr + 4)
            w2 = tl.load(shapes_ptr + 5)
        if NUM_LEVELS > 3:
            h3 = tl.load(shapes_ptr + 6)
            w3 = tl.load(shapes_ptr + 7)
        s1 = h0 * w0
        s2 = s1 + h1 * w1
        s3 = s2 + h2 * w2
        LP = NUM_LEVELS * NUM_POINTS
        # TensorRT's linear format: contiguous strides from the sizes
        _deform(value_ptr, loc_ptr, weight_ptr, out_ptr, LQ, DH,
                h0, w0, 0, h1, w1, s1, h2, w2, s2, h3, w3, s3,
                S * M * DH, M * DH, DH, 1,
                LQ * M * LP * 2, M * LP * 2, LP * 2, NUM_POINTS * 2, 2, 1,
                LQ * M * LP, M * LP, LP, NUM_POINTS, 1,
                LQ * M * DH, M * DH, 1,
                NUM_LEVELS=NUM_LEVELS, NUM_POINTS=NUM_POINTS, BLOCK_Q=BLOCK_Q, BLOCK_P=BLOCK_P, BLOCK_D=BLOCK_D)

    @triton.jit
    def mask_pooling_aot(
        # inputs: features (B, C, H, W), mask logits (B, Q, HI, WI)
        x_ptr, logit_ptr,
        # scalars
        Q, H, W, HI, WI,
        # output (B, Q, C)
        out_ptr,
        # meta
        C: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        pid_q = tl.program_id(0)
        pid_c = tl.program_id(1)
        b = tl.program_id(2)
        offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        q_valid = offs_q < Q
        c_valid = offs_c < C
        n_pix = H * W
        x_base = x_ptr + b * C * n_pix + offs_c[None, :] * n_pix
        l_base = logit_ptr + (b * Q + offs_q[:, None]) * (HI * WI)
        scale_h = HI.to(tl.float32) / H.to(tl.float32)
        scale_w = WI.to(tl.float32) / W.to(tl.float32)
        acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
        cnt = tl.zeros([BLOCK_Q], dtype=tl.float32)
        for p0 in range(0, n_pix, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            p_valid = offs_p < n_pix
            oy = offs_p // W
            ox = offs_p % W
            lmask = q_valid[:, None] & p_valid[None, :]
            # F.interpolate(bilinear, align_corners=False) on the fly; equal sizes give scale 1 and the exact
            # logits (weights 1 and 0), so one path serves the resized and the same-size case
            sy = tl.maximum(scale_h * (oy.to(tl.float32) + 0.5) - 0.5, 0.0)
            sx = tl.maximum(scale_w * (ox.to(tl.float32) + 0.5) - 0.5, 0.0)
            y0 = sy.to(tl.int32)
            x0 = sx.to(tl.int32)
            y1 = tl.where(y0 < HI - 1, y0 + 1, y0)
            x1 = tl.where(x0 < WI - 1, x0 + 1, x0)
            ly1 = sy - y0.to(tl.float32)
            lx1 = sx - x0.to(tl.float32)
            v00 = tl.load(l_base + (y0 * WI + x0)[None, :], mask=lmask, other=0.0).to(tl.float32)
            v01 = tl.load(l_base + (y0 * WI + x1)[None, :], mask=lmask, other=0.0).to(tl.float32)
            v10 = tl.load(l_base + (y1 * WI + x0)[None, :], mask=lmask, other=0.0).to(tl.float32)
            v11 = tl.load(l_base + (y1 * WI + x1)[None, :], mask=lmask, other=0.0).to(tl.float32)
            top = (1.0 - lx1)[None, :] * v00 + lx1[None, :] * v01
            bottom = (1.0 - lx1)[None, :] * v10 + lx1[None, :] * v11
            val = (1.0 - ly1)[None, :] * top + ly1[None, :] * bottom
            on = (val > 0) & lmask
            cnt += tl.sum(on.to(tl.float32), axis=1)
            xt = tl.load(x_base + offs_p[:, None], mask=p_valid[:, None] & c_valid[None, :], other=0.0)
            acc = tl.dot(on.to(xt.dtype), xt, acc, input_precision="tf32x3")
        out = acc / (cnt + 1e-8)[:, None]
        tl.store(out_ptr + (b * Q + offs_q[:, None]) * C + offs_c[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=q_valid[:, None] & c_valid[None, :])

    @triton.jit
    def masked_attention_aot(
        # inputs: q (B, H, LQ, D), k / v (B, H, LK, D), blocked (B, HM, LQ, LK) as bytes, 1 = key hidden
        q_ptr, k_ptr, v_ptr, blocked_ptr,
        # scalars
        H, HM, LQ, LK,
        # output (B, H, LQ, D)
        o_ptr,
        # meta
        D: tl.constexpr, QK_SCALE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_j = tl.arange(0, BLOCK_N)
        m_valid = offs_m < LQ
        d_valid = offs_d < D  # BLOCK_D >= 16 for tl.dot: smaller head dims are zero-padded
        q = tl.load(q_ptr + (pid_bh * LQ + offs_m[:, None]) * D + offs_d[None, :],
                    mask=m_valid[:, None] & d_valid[None, :], other=0.0)
        m_base = blocked_ptr + ((b * HM + h % HM) * LQ + offs_m[:, None]) * LK  # HM = 1: one mask for all heads
        # pass 1: does each query see a key? One hiding every key sees them all (Mask2Former's reset)
        row_any = tl.zeros([BLOCK_M], dtype=tl.int32)
        for n0 in range(0, LK, BLOCK_N):
            offs_n = n0 + offs_j
            valid = m_valid[:, None] & (offs_n < LK)[None, :]
            hidden = tl.load(m_base + offs_n[None, :], mask=valid, other=1)
            row_any = tl.maximum(row_any, tl.max(((hidden == 0) & valid).to(tl.int32), axis=1))
        sees = row_any > 0
        # pass 2: online softmax over the key tiles (exp2 with log2(e) folded into QK_SCALE)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for n0 in range(0, LK, BLOCK_N):
            offs_n = n0 + offs_j
            n_valid = offs_n < LK
            kt = tl.load(k_ptr + (pid_bh * LK + offs_n[None, :]) * D + offs_d[:, None],
                         mask=n_valid[None, :] & d_valid[:, None], other=0.0)
            s = tl.dot(q, kt, input_precision="tf32x3") * QK_SCALE
            hidden = tl.load(m_base + offs_n[None, :], mask=m_valid[:, None] & n_valid[None, :], other=0) != 0
            s = tl.where((hidden & sees[:, None]) | (offs_n >= LK)[None, :], float("-inf"), s)
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no visible key yet
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + (pid_bh * LK + offs_n[:, None]) * D + offs_d[None, :],
                        mask=n_valid[:, None] & d_valid[None, :], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="tf32x3")
            m_i = m_new
        o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        tl.store(o_ptr + (pid_bh * LQ + offs_m[:, None]) * D + offs_d[None, :], o.to(o_ptr.dtype.element_ty),
                 mask=m_valid[:, None] & d_valid[None, :])

    return {"ms_deform_attn": ms_deform_attn_aot, "mask_pooling": mask_pooling_aot,
            "masked_attention": masked_attention_aot}


def launch(plan: LaunchPlan, inputs: Sequence, outputs: Sequence) -> None:
    """Launch a plan's kernel the way TensorRT does: inputs, the plan's scalars, outputs (Triton's own launcher;
    the tests run it under ``TRITON_INTERPRET=1``)."""
    kernel = aot_kernels()[plan.op]
    kernel[tuple(int(g) for g in plan.grid)](*inputs, *(int(s) for s in plan.scalars), *outputs, **plan.constexprs,
                                              num_warps=plan.num_warps, num_stages=plan.num_stages)


def signature(arg_names: Sequence[str], inputs: Sequence[str], n_scalars: int, outputs: Sequence[str],
              constexprs: dict) -> dict[str, str]:
    """``ASTSource`` signature: pointers for the inputs, i32 scalars, pointers for the outputs, then constexprs."""
    types = [POINTER_TYPES[d] for d in inputs] + ["i32"] * n_scalars + [POINTER_TYPES[d] for d in outputs]
    names = list(arg_names)
    if len(names) != len(types) + len(constexprs) or set(names[len(types):]) != set(constexprs):
        raise ValueError(f"kernel arguments {names} do not match {len(types)} tensors/scalars + {sorted(constexprs)}")
    return {**dict(zip(names, types)), **{name: "constexpr" for name in names[len(types):]}}


def trim_entry_params(ptx: str, name: str, keep: int) -> str:
    """Drop the parameters Triton appends after a kernel's own (global and profile scratch pointers): TensorRT
    launches exactly inputs + scalars + outputs. Refuses when the body reads a dropped parameter."""
    match = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\(([^)]*)\)", ptx)
    if match is None:
        raise ValueError(f"no .entry {name} in the PTX")
    params = [p.strip() for p in match.group(1).split(",") if p.strip()]
    if len(params) < keep:
        raise ValueError(f"{name}: the PTX entry has {len(params)} parameters, TensorRT passes {keep}")
    body = ptx[match.end():]
    for dropped in params[keep:]:
        param = dropped.split()[-1]
        if re.search(r"\b" + re.escape(param) + r"\b", body):
            raise ValueError(f"{name}: the kernel reads {param}, which TensorRT does not pass")
    kept = "\n\t" + ",\n\t".join(params[:keep]) + "\n"
    return ptx[:match.start(1)] + kept + ptx[match.end(1):]


@dataclass(frozen=True)
class CompiledKernel:
    name: str
    ptx: str
    block_x: int  # threads per block: num_warps * 32
    shared_mem: int  # dynamic shared memory, bytes


def compile_ptx(plan: LaunchPlan, inputs: Sequence[str], outputs: Sequence[str], capability: int) -> CompiledKernel:
    """PTX of a plan's kernel for compute capability ``capability`` (90 for sm_90); needs no GPU."""
    kernel = aot_kernels()[plan.op]
    from triton.backends.compiler import GPUTarget

    sig = signature(kernel.arg_names, inputs, len(plan.scalars), outputs, plan.constexprs)
    source = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=plan.constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32),
                              options={"num_warps": plan.num_warps, "num_stages": plan.num_stages})
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise ValueError(f"{plan.op}: the kernel needs Triton scratch memory, which a TensorRT AOT plugin cannot give")
    if meta.shared > SHARED_MEMORY_LIMIT:
        raise ValueError(f"{plan.op}: {meta.shared} bytes of shared memory, over the {SHARED_MEMORY_LIMIT} a TensorRT "
                         f"plugin launch gets; use smaller blocks or fewer stages")
    ptx = trim_entry_params(compiled.asm["ptx"], meta.name, len(inputs) + len(plan.scalars) + len(outputs))
    return CompiledKernel(meta.name, ptx, meta.num_warps * 32, meta.shared)
