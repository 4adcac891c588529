"""TensorRT 10 plugins ("quickly deployable plugins", ``tensorrt.plugin``) backed by the Triton kernels.

``register_tensorrt_plugins()`` registers three plugins in TensorRT's registry:

=========================  ==========================================================  ==============
plugin id                  inputs -> output                                            attributes
=========================  ==========================================================  ==============
``cmpf::masked_attention``  q, k, v (B, H, L, D), blocked bool (B, 1|H, Lq, Lk) -> like q  -
``cmpf::mask_pooling``      x (B, C, H, W), logits (B, Q, h, w) -> (B, Q, C)            -
``cmpf::ms_deform_attn``    value, locations, weights -> (N, Lq, M * Dh)                ``spatial_shapes``
=========================  ==========================================================  ==============

``spatial_shapes`` is the flattened int32 array [H0, W0, H1, W1, ...]. The implementations are JIT
(``trtp.impl``): at run time TensorRT calls back into Python, which launches the Triton kernel on
TensorRT's stream, so an engine using them needs this process (Python, torch, triton) to run.
In an ONNX graph such a node has ``op_type`` = the name after ``::`` and the attribute
``plugin_namespace="cmpf"``. The default export path stays plugin-free (STYLE 3.8: ONNX/TensorRT use the
``_ref`` functions); these plugins are the opt-in route for engines that want the fused kernels.

TensorRT is imported inside ``register_tensorrt_plugins`` only: importing this module never needs it.
No ``from __future__ import annotations`` here: ``trtp.register`` reads the real type hints.
"""

PLUGIN_NAMESPACE = "cmpf"
PLUGIN_OPS = {"masked_attention": 4, "mask_pooling": 2, "ms_deform_attn": 4}  # op -> number of inputs
PLUGIN_IDS = tuple(f"{PLUGIN_NAMESPACE}::{op}" for op in PLUGIN_OPS)
_FLOAT_IO = "FP32|FP16|BF16"  # '|' = dependent: all float I/O of one call share a dtype
_registered = False


def register_tensorrt_plugins() -> tuple[str, ...]:
    """Register the three plugins with TensorRT (idempotent); returns their ids.

    Raises ImportError with an actionable message when TensorRT (>= 10.7, ``tensorrt.plugin``) is absent.
    """
    global _registered
    try:
        import numpy as np
        import numpy.typing as npt
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise ImportError(
            "TensorRT plugins need TensorRT >= 10.7 with its Python `tensorrt.plugin` module "
            "(pip install tensorrt); without it, build engines from the plugin-free ONNX export"
        ) from exc
    if _registered:
        return PLUGIN_IDS

    import torch

    from cmpf.kernels.mask_pooling import mask_pooling_triton
    from cmpf.kernels.masked_attention import masked_attention_triton
    from cmpf.kernels.ms_deform_attn import ms_deform_attn_triton

    def _run(stream: int, outputs, launch) -> None:
        """Run ``launch()`` on TensorRT's stream and copy its result into the plugin's output buffer."""
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            out = torch.as_tensor(outputs[0], device="cuda")
            out.copy_(launch())

    def _cuda(tensor):
        return torch.as_tensor(tensor, device="cuda")

    # --- masked attention -------------------------------------------------------------------------
    @trtp.register("cmpf::masked_attention")
    def _masked_attention_desc(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, blocked: trtp.TensorDesc
    ) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune("cmpf::masked_attention")
    def _masked_attention_autotune(q, k, v, blocked, outputs):
        io = ",".join([_FLOAT_IO] * 3 + ["BOOL|BOOL|BOOL", _FLOAT_IO])
        return [trtp.AutoTuneCombination(io, "LINEAR")]

    @trtp.impl("cmpf::masked_attention")
    def _masked_attention_impl(q, k, v, blocked, outputs, stream: int) -> None:
        _run(stream, outputs, lambda: masked_attention_triton(_cuda(q), _cuda(k), _cuda(v), _cuda(blocked)))

    # --- mask pooling -----------------------------------------------------------------------------
    @trtp.register("cmpf::mask_pooling")
    def _mask_pooling_desc(x: trtp.TensorDesc, logits: trtp.TensorDesc) -> trtp.TensorDesc:
        shape = (x.shape_expr[0], logits.shape_expr[1], x.shape_expr[1])
        return trtp.from_shape_expr(shape, dtype=x.dtype)

    @trtp.autotune("cmpf::mask_pooling")
    def _mask_pooling_autotune(x, logits, outputs):
        return [trtp.AutoTuneCombination(",".join([_FLOAT_IO] * 3), "LINEAR")]

    @trtp.impl("cmpf::mask_pooling")
    def _mask_pooling_impl(x, logits, outputs, stream: int) -> None:
        _run(stream, outputs, lambda: mask_pooling_triton(_cuda(x), _cuda(logits)))

    # --- multi-scale deformable attention ---------------------------------------------------------
    @trtp.register("cmpf::ms_deform_attn")
    def _ms_deform_attn_desc(
        value: trtp.TensorDesc,
        locations: trtp.TensorDesc,
        weights: trtp.TensorDesc,
        spatial_shapes: npt.NDArray[np.int32],
    ) -> trtp.TensorDesc:
        shape = (value.shape_expr[0], locations.shape_expr[1], value.shape_expr[2] * value.shape_expr[3])
        return trtp.from_shape_expr(shape, dtype=value.dtype)

    @trtp.autotune("cmpf::ms_deform_attn")
    def _ms_deform_attn_autotune(value, locations, weights, outputs):
        return [trtp.AutoTuneCombination(",".join([_FLOAT_IO] * 4), "LINEAR")]

    @trtp.impl("cmpf::ms_deform_attn")
    def _ms_deform_attn_impl(value, locations, weights, spatial_shapes, outputs, stream: int) -> None:
        shapes = [int(s) for s in spatial_shapes]
        _run(
            stream,
            outputs,
            lambda: ms_deform_attn_triton(_cuda(value), shapes, _cuda(locations), _cuda(weights)),
        )

    _registered = True
    return PLUGIN_IDS
