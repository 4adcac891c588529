"""Multi-scale deformable attention (Deformable DETR), pure torch, plus the SAM-branch index quirk.

Consumes values (N, S, M, Dh) flattened over L levels of sizes ``spatial_shapes`` [(H_l, W_l)],
sampling locations (N, Lq, M, L, P, 2) in [0, 1] (x, y) and attention weights (N, Lq, M, L, P);
produces (N, Lq, M*Dh). Bilinear sampling with zero padding and align_corners=False, i.e. the
official CUDA kernel's convention (``grid_sample`` with grid = 2*loc - 1).
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F


def ms_deform_attn_ref(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    upcast: bool = False,
) -> torch.Tensor:
    """Reference deformable attention through ``grid_sample``.

    Args:
        value: (N, S, M, Dh), S = sum of H_l * W_l.
        spatial_shapes: L pairs (H_l, W_l), in the order the levels are flattened in ``value``.
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y).
        attention_weights: (N, Lq, M, L, P).
        upcast: compute in float32.
    Returns:
        (N, Lq, M * Dh).
    """
    if upcast:
        value = value.float()
        sampling_locations = sampling_locations.float()
        attention_weights = attention_weights.float()
    n, _, m, dh = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        # (N, H*W, M, Dh) -> (N*M, Dh, H, W)
        v = values[level].flatten(2).transpose(1, 2).reshape(n * m, dh, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1).contiguous()  # CPU fp16 needs contiguous
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N*M, Dh, Lq, L*P) weighted by (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, n_levels * n_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(n, m * dh, lq).transpose(1, 2)


def fold_levels_like_official_kernel(
    sampling_locations: torch.Tensor, attention_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reproduce the official CUDA kernel reading an L-level buffer when fed one level.

    FrozenSeg's SAM-branch encoder is built for 3 levels and fed 1 (MODEL_SPEC.md §4.3). The compiled
    kernel takes the level count from ``spatial_shapes`` (1) and walks the contiguous
    (Lq, M, L, P[, 2]) buffers with single-level strides, so query/head row r reads row r of the
    buffer viewed as (-1, P[, 2]) - which belongs to another query, head and level. The released
    checkpoints were trained with this, and evaluated at batch 1; we apply the rule per image so
    results do not depend on the batch composition.

    Args:
        sampling_locations: (N, Lq, M, L, P, 2).
        attention_weights: (N, Lq, M, L, P), already softmaxed over L*P.
    Returns:
        ((N, Lq, M, 1, P, 2), (N, Lq, M, 1, P)).
    """
    n, lq, m, _, p, _ = sampling_locations.shape
    rows = lq * m
    loc = sampling_locations.reshape(n, -1, p, 2)[:, :rows].reshape(n, lq, m, 1, p, 2)
    w = attention_weights.reshape(n, -1, p)[:, :rows].reshape(n, lq, m, 1, p)
    return loc, w


# --------------------------------------------------------------------------------------------------
# Triton kernels. Triton is imported on first use (``_build_kernels``), never at module import.
# --------------------------------------------------------------------------------------------------

triton = tl = None  # set by _build_kernels()

MAX_LEVELS = 4  # level sizes travel as scalar arguments (no per-call host-to-device copy)


@functools.lru_cache(maxsize=None)
def _build_kernels():
    global triton, tl
    from cmpf.kernels._triton import import_triton

    triton, tl = import_triton()

    @triton.jit
    def _ms_deform_attn_kernel(
        # pointers
        value_ptr,  # (N, S, M, DH)
        loc_ptr,  # (N, LQ, M, L, P, 2) normalised (x, y)
        weight_ptr,  # (N, LQ, M, L, P)
        out_ptr,  # (N, LQ, M * DH)
        # sizes: per-level height, width and start row in value (slots past NUM_LEVELS unused)
        LQ, DH,
        H0, W0, S0, H1, W1, S1, H2, W2, S2, H3, W3, S3,
        # strides
        stride_vn, stride_vs, stride_vm, stride_vd,
        stride_ln, stride_lq, stride_lm, stride_ll, stride_lp, stride_lc,
        stride_wn, stride_wq, stride_wm, stride_wl, stride_wp,
        stride_on, stride_oq, stride_oc,
        # meta
        NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid_q = tl.program_id(0)
        m = tl.program_id(1)
        n = tl.program_id(2)
        offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        offs_p = tl.arange(0, BLOCK_P)
        offs_d = tl.arange(0, BLOCK_D)
        # BLOCK_P / BLOCK_D are powers of 2: the padded points get weight 0, padded channels are not stored
        qp_valid = (offs_q < LQ)[:, None] & (offs_p < NUM_POINTS)[None, :]
        d_valid = offs_d < DH
        v_base = value_ptr + n * stride_vn + m * stride_vm + offs_d[None, None, :] * stride_vd
        l_base = loc_ptr + n * stride_ln + offs_q[:, None] * stride_lq + m * stride_lm + offs_p[None, :] * stride_lp
        w_base = weight_ptr + n * stride_wn + offs_q[:, None] * stride_wq + m * stride_wm + offs_p[None, :] * stride_wp
        acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
        for lvl in tl.static_range(NUM_LEVELS):
            if lvl == 0:
                height, width, start = H0, W0, S0
            elif lvl == 1:
                height, width, start = H1, W1, S1
            elif lvl == 2:
                height, width, start = H2, W2, S2
            else:
                height, width, start = H3, W3, S3
            # all points of the level at once: (BLOCK_Q, BLOCK_P) coordinates and weights
            loc_x = tl.load(l_base + lvl * stride_ll, mask=qp_valid, other=0.0).to(tl.float32)
            loc_y = tl.load(l_base + lvl * stride_ll + stride_lc, mask=qp_valid, other=0.0).to(tl.float32)
            attn = tl.load(w_base + lvl * stride_wl, mask=qp_valid, other=0.0).to(tl.float32)
            # align_corners=False: pixel = loc * size - 0.5; clamping far-away points changes nothing
            # (all four corners stay outside) but keeps the int conversion in range
            px = tl.minimum(tl.maximum(loc_x * width - 0.5, -2.0), width + 1.0)
            py = tl.minimum(tl.maximum(loc_y * height - 0.5, -2.0), height + 1.0)
            x0f = tl.floor(px)
            y0f = tl.floor(py)
            fx = px - x0f
            fy = py - y0f
            x0 = x0f.to(tl.int32)
            y0 = y0f.to(tl.int32)
            for dy in tl.static_range(2):
                yi = y0 + dy
                wy = fy * dy + (1.0 - fy) * (1 - dy)  # dy is a compile-time 0/1
                for dx in tl.static_range(2):
                    xi = x0 + dx
                    wgt = attn * wy * (fx * dx + (1.0 - fx) * (1 - dx))
                    # zeros padding: corners outside the level contribute nothing
                    inside = qp_valid & (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
                    row = start + yi * width + xi
                    val = tl.load(
                        v_base + row[:, :, None] * stride_vs,
                        mask=inside[:, :, None] & d_valid[None, None, :], other=0.0,
                    ).to(tl.float32)
                    acc += tl.sum(wgt[:, :, None] * val, axis=1)
        out = out_ptr + n * stride_on + offs_q[:, None] * stride_oq + (m * DH + offs_d)[None, :] * stride_oc
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(offs_q < LQ)[:, None] & d_valid[None, :])

    return _ms_deform_attn_kernel


def ms_deform_attn_triton(
    value: torch.Tensor,
    spatial_shapes: Sequence[int],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Triton deformable attention; same contract as ``ms_deform_attn_ref``.

    Shapes: value (N, S, M, Dh); ``spatial_shapes`` the L (H, W) pairs (nested or flattened to
    [H0, W0, H1, W1, ...], L <= 4); sampling_locations (N, Lq, M, L, P, 2); attention_weights
    (N, Lq, M, L, P). One program gathers BLOCK_Q queries x Dh channels of one head.
    Returns (N, Lq, M * Dh) in value's dtype, accumulated in fp32.
    """
    from torch.library import wrap_triton

    from cmpf.kernels._triton import check_device, interpreting, launch_context, next_power_of_2

    kernel = _build_kernels()
    shapes = _flat_shapes(spatial_shapes)
    n_levels = len(shapes) // 2
    assert value.dim() == 4, "value must be (N, S, M, Dh)"
    n, s, m, dh = value.shape
    assert sampling_locations.dim() == 6 and sampling_locations.shape[-1] == 2, "locations must be (N, Lq, M, L, P, 2)"
    _, lq, _, n_lvl_loc, n_points, _ = sampling_locations.shape
    assert sampling_locations.shape[:3] == (n, lq, m) and n_lvl_loc == n_levels, (
        f"locations {tuple(sampling_locations.shape)} vs value {tuple(value.shape)} and {n_levels} levels"
    )
    assert attention_weights.shape == sampling_locations.shape[:-1], "weights must be (N, Lq, M, L, P)"
    assert 1 <= n_levels <= MAX_LEVELS, f"1..{MAX_LEVELS} levels supported, got {n_levels}"
    sizes = [shapes[2 * i] * shapes[2 * i + 1] for i in range(n_levels)]
    assert sum(sizes) == s, f"value has {s} rows but the levels hold {sum(sizes)}"
    for t in (value, sampling_locations, attention_weights):
        assert t.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {t.dtype}"
    check_device(value, sampling_locations, attention_weights)

    level_args = []
    start = 0
    for i in range(MAX_LEVELS):
        h, w = (shapes[2 * i], shapes[2 * i + 1]) if i < n_levels else (0, 0)
        level_args += [h, w, start]
        start += h * w
    out = torch.empty((n, lq, m * dh), dtype=value.dtype, device=value.device)
    # 32 queries x 8 warps: ~75-95 registers on sm_90, no spills; the interpreter pays per op, so bigger blocks
    block_q = 128 if interpreting() else 32
    with launch_context(value):
        wrap_triton(kernel)[(triton.cdiv(lq, block_q), m, n)](
            value, sampling_locations, attention_weights, out,
            lq, dh, *level_args,
            *value.stride(), *sampling_locations.stride(), *attention_weights.stride(), *out.stride(),
            NUM_LEVELS=n_levels, NUM_POINTS=n_points,
            BLOCK_Q=block_q, BLOCK_P=next_power_of_2(n_points), BLOCK_D=next_power_of_2(dh), num_warps=8,
        )
    return out


def _flat_shapes(spatial_shapes) -> list[int]:
    """[(H0, W0), (H1, W1)], [H0, W0, H1, W1] or an (L, 2) tensor -> [H0, W0, H1, W1] as python ints."""
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.flatten().tolist()
    flat = []
    for item in spatial_shapes:
        if isinstance(item, (tuple, list, torch.Size)):
            flat += [int(v) for v in item]
        else:
            flat.append(int(item))
    assert len(flat) % 2 == 0, f"spatial_shapes must be (H, W) pairs, got {spatial_shapes}"
    return flat


def _ms_deform_attn_fake(value, spatial_shapes, sampling_locations, attention_weights):
    n, _, m, dh = value.shape
    return value.new_empty((n, sampling_locations.shape[1], m * dh))


def _ms_deform_attn_op_impl(
    value: torch.Tensor, spatial_shapes: list[int], sampling_locations: torch.Tensor, attention_weights: torch.Tensor
) -> torch.Tensor:
    return ms_deform_attn_triton(value, spatial_shapes, sampling_locations, attention_weights)


_OP = None  # the registered ``cmpf::ms_deform_attn`` op, set by register_op()


@torch.compiler.disable  # registration is a side effect; under torch.compile call it once beforehand
def register_op():
    """Register ``cmpf::ms_deform_attn`` (once); the schema takes the flattened [H0, W0, H1, W1, ...].

    Idempotent. The dispatch function calls it on first use; call it before
    ``torch.compile(fullgraph=True)`` so the compiled graph finds the op already registered.
    """
    global _OP
    if _OP is None:
        op = torch.library.triton_op("cmpf::ms_deform_attn", _ms_deform_attn_op_impl, mutates_args=())
        # explicit fake: the automatic one would run the kernel under TRITON_INTERPRET=1
        op.register_fake(_ms_deform_attn_fake)
        _OP = op
    return _OP


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    impl: str = "torch",
) -> torch.Tensor:
    """Multi-scale deformable attention; ``impl`` is "torch" (grid_sample reference) or "triton"."""
    if impl == "torch":
        return ms_deform_attn_ref(value, spatial_shapes, sampling_locations, attention_weights)
    if impl == "triton":
        op = _OP if _OP is not None else register_op()
        return op(value, _flat_shapes(spatial_shapes), sampling_locations, attention_weights)
    raise ValueError(f"unknown deformable-attention impl {impl!r} (expected 'torch' or 'triton')")
