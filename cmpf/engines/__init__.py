"""TensorRT build side: engines from the exported ONNX graphs, the kernels as TensorRT plugins, and a lint.

``build``: ``cmpf build`` (plan → builder per graph → staged files → manifest last), with the pure pieces
(profiles, network flags, recipes, refusals); ``tensorrt_build``: the layer that calls TensorRT;
``torch_tensorrt``: the Torch-TensorRT route; ``profiles``: optimisation-profile ranges from
``cmpf.spec``'s symbolic dims and ``--shapes``; ``lint`` (+ ``trt_onnx_ops.json``): ``cmpf doctor
--onnx``, TensorRT readiness on a CPU; ``plugins`` (+ ``plugin_kernels``, ``plugin_export``): the three
Triton kernels as TensorRT quickly deployable plugins with ahead-of-time implementations, and the ONNX
nodes ``cmpf export --plugins`` writes for them. Nothing here imports the torch model; the runtime never
imports this package (the engine recipe the runner checks lives in ``cmpf.runtime.tensorrt_runner``).
"""
