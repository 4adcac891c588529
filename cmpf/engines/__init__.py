"""TensorRT build side: engines from the exported ONNX graphs, and the kernels as TensorRT plugins.

``plugins``: the three Triton kernels registered as TensorRT quickly deployable plugins. Nothing
here imports the torch model; the runtime never imports this package.
"""
