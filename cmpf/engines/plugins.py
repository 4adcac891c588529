"""cmpf's three Triton kernels as TensorRT quickly deployable plugins, with ahead-of-time implementations.

``register_tensorrt_plugins()`` registers in TensorRT's plugin registry:

=========================  ===================================================================================
plugin id                  inputs -> output
=========================  ===================================================================================
``cmpf::masked_attention``  q, k, v (B, H, L, D), blocked bool (B, 1|H, Lq, Lk) -> like q
``cmpf::mask_pooling``      x (B, C, H, W), mask_logits (B, Q, h, w) -> (B, Q, C)
``cmpf::ms_deform_attn``    value (N, S, M, Dh), spatial_shapes (L, 2) int32, locations, weights -> (N, Lq, M * Dh)
=========================  ===================================================================================

Each has an ahead-of-time implementation (``trtp.aot_impl``): the Triton kernel of
``cmpf.engines.plugin_kernels`` compiled to PTX for the build GPU and embedded in the engine, so an
engine that uses it runs without Python (trtexec, C++, Triton Inference Server). A JIT implementation
(``trtp.impl``: Python launches ``cmpf.kernels``' Triton kernels on TensorRT's stream) serves networks
that prefer JIT; ``cmpf build --plugins`` sets ``PREFER_AOT_PYTHON_PLUGINS``. The plugins take no
attributes: AOT attributes are not serialised into the engine, and the deformable attention's level
sizes follow the image size, so they are an input. In ONNX a plugin node has ``op_type`` = the name
after ``::``, domain ``cmpf``, ``plugin_namespace="cmpf"`` and ``aot=1`` (``cmpf export --plugins``,
``cmpf.engines.plugin_export``).

The names import without TensorRT; TensorRT, torch and Triton are imported by
``register_tensorrt_plugins`` only. No ``from __future__ import annotations``: ``trtp.register`` reads the
real type hints.
"""

PLUGIN_NAMESPACE = "cmpf"
PLUGIN_OPS = {"masked_attention": 4, "mask_pooling": 2, "ms_deform_attn": 4}  # op -> number of inputs
PLUGIN_IDS = tuple(f"{PLUGIN_NAMESPACE}::{op}" for op in PLUGIN_OPS)
_FLOAT = "FP32|FP16|BF16"  # '|' lists alternatives; the k-th alternatives of all positions go together
_DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "BOOL": "bool"}
_registered = False


def _fixed(kind: str) -> str:
    """A type that stays the same in each of the three float alternatives."""
    return "|".join([kind] * 3)


def register_tensorrt_plugins() -> tuple:
    """Register the three plugins with TensorRT (idempotent); returns their ids.

    Raises ``MissingDependency`` (an ImportError) naming the fix when TensorRT's ``tensorrt.plugin`` is absent.
    """
    global _registered
    from cmpf.errors import MissingDependency

    try:
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise MissingDependency("TensorRT plugins need TensorRT >= 10.12 with its `tensorrt.plugin` module; "
                                "pip install 'cmpf[trt]', or build from the plugin-free ONNX export") from exc
    if _registered:
        return PLUGIN_IDS
    _register(trtp)
    _registered = True
    return PLUGIN_IDS


def _register(trtp) -> None:
    from typing import Tuple, Union

    import torch

    from cmpf.engines import plugin_kernels as K
    from cmpf.kernels.mask_pooling import mask_pooling_triton
    from cmpf.kernels.masked_attention import masked_attention_triton
    from cmpf.kernels.ms_deform_attn import ms_deform_attn_triton

    AotResult = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]

    def const(d) -> int:
        if isinstance(d, int):
            return d
        if not d.is_constant:
            raise ValueError("cmpf plugins need this dim (heads, head size, channels, levels, points) static in the "
                             "network")
        return d.constant_value()

    def cdiv(a, b):
        return K.int_cdiv(a, b) if isinstance(a, int) and isinstance(b, int) else trtp.cdiv(a, b)

    def aot(plan, inputs, outputs):
        """PTX for this GPU, its launch grid and the scalar arguments, as TensorRT's AOT interface wants them."""
        major, minor = torch.cuda.get_device_capability()
        kernel = K.compile_ptx(plan, [_DTYPE_NAMES[t.dtype.name] for t in inputs],
                               [_DTYPE_NAMES[t.dtype.name] for t in outputs], major * 10 + minor)
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y, params.grid_z = plan.grid
        params.block_x = kernel.block_x
        params.shared_mem = kernel.shared_mem
        scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(s) for s in plan.scalars])
        return kernel.name.encode(), kernel.ptx.encode(), params, scalars

    def run(stream: int, outputs, launch) -> None:
        """JIT: ``launch()`` on TensorRT's stream, its result copied into the plugin's output buffer."""
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            torch.as_tensor(outputs[0], device="cuda").copy_(launch())

    def cuda(tensor):
        return torch.as_tensor(tensor, device="cuda")

    # --- masked attention -------------------------------------------------------------------------
    @trtp.register("cmpf::masked_attention")
    def _masked_attention_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                               blocked: trtp.TensorDesc) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune("cmpf::masked_attention")
    def _masked_attention_autotune(q, k, v, blocked, outputs):
        return [trtp.AutoTuneCombination(", ".join([_FLOAT] * 3 + [_fixed("BOOL"), _FLOAT]), "LINEAR")]

    @trtp.aot_impl("cmpf::masked_attention")
    def _masked_attention_aot(q, k, v, blocked, outputs, tactic: int) -> AotResult:
        plan = K.masked_attention_plan(q.shape_expr, k.shape_expr, v.shape_expr, blocked.shape_expr, const=const,
                                       cdiv=cdiv)
        return aot(plan, [q, k, v, blocked], outputs)

    @trtp.impl("cmpf::masked_attention")
    def _masked_attention_impl(q, k, v, blocked, outputs, stream: int) -> None:
        run(stream, outputs, lambda: masked_attention_triton(cuda(q), cuda(k), cuda(v), cuda(blocked)))

    # --- mask pooling -----------------------------------------------------------------------------
    @trtp.register("cmpf::mask_pooling")
    def _mask_pooling_desc(x: trtp.TensorDesc, mask_logits: trtp.TensorDesc) -> trtp.TensorDesc:
        return trtp.from_shape_expr((x.shape_expr[0], mask_logits.shape_expr[1], x.shape_expr[1]), dtype=x.dtype)

    @trtp.autotune("cmpf::mask_pooling")
    def _mask_pooling_autotune(x, mask_logits, outputs):
        return [trtp.AutoTuneCombination(", ".join([_FLOAT] * 3), "LINEAR")]

    @trtp.aot_impl("cmpf::mask_pooling")
    def _mask_pooling_aot(x, mask_logits, outputs, tactic: int) -> AotResult:
        plan = K.mask_pooling_plan(x.shape_expr, mask_logits.shape_expr, dtype=_DTYPE_NAMES[x.dtype.name],
                                   const=const, cdiv=cdiv)
        return aot(plan, [x, mask_logits], outputs)

    @trtp.impl("cmpf::mask_pooling")
    def _mask_pooling_impl(x, mask_logits, outputs, stream: int) -> None:
        run(stream, outputs, lambda: mask_pooling_triton(cuda(x), cuda(mask_logits)))

    # --- multi-scale deformable attention ---------------------------------------------------------
    @trtp.register("cmpf::ms_deform_attn")
    def _ms_deform_attn_desc(value: trtp.TensorDesc, spatial_shapes: trtp.TensorDesc, locations: trtp.TensorDesc,
                             weights: trtp.TensorDesc) -> trtp.TensorDesc:
        n, m, dh = value.shape_expr[0], value.shape_expr[2], value.shape_expr[3]
        return trtp.from_shape_expr((n, locations.shape_expr[1], m * dh), dtype=value.dtype)

    @trtp.autotune("cmpf::ms_deform_attn")
    def _ms_deform_attn_autotune(value, spatial_shapes, locations, weights, outputs):
        return [trtp.AutoTuneCombination(", ".join([_FLOAT, _fixed("INT32"), _FLOAT, _FLOAT, _FLOAT]), "LINEAR")]

    @trtp.aot_impl("cmpf::ms_deform_attn")
    def _ms_deform_attn_aot(value, spatial_shapes, locations, weights, outputs, tactic: int) -> AotResult:
        plan = K.ms_deform_attn_plan(value.shape_expr, spatial_shapes.shape_expr, locations.shape_expr,
                                     weights.shape_expr, const=const, cdiv=cdiv)
        return aot(plan, [value, spatial_shapes, locations, weights], outputs)

    @trtp.impl("cmpf::ms_deform_attn")
    def _ms_deform_attn_impl(value, spatial_shapes, locations, weights, outputs, stream: int) -> None:
        shapes = cuda(spatial_shapes).flatten().tolist()  # the level sizes, read back once per call
        run(stream, outputs, lambda: ms_deform_attn_triton(cuda(value), shapes, cuda(locations), cuda(weights)))
