"""Reduced-precision ONNX graphs: ONNX in, ONNX out, written beside the fp32 files of an export.

TensorRT 10.12 deprecated weak typing and TensorRT 11 removed the precision builder flags, so
precision lives in the graph: ``fp16`` by casts with an fp32 keep-list (``cmpf.precision.fp16``,
ONNX Runtime's float16 converter), ``int8`` by explicit symmetric Q/DQ (``cmpf.precision.qdq``,
``onnxruntime.quantization`` in QDQ format) calibrated on the inputs the real pipeline gives each
graph (``cmpf.precision.calibration``). ``cmpf.precision.api.quantize_artifacts`` is ``cmpf
quantize``: it writes ``<graph>.<precision>.onnx`` files and records them, with the tool versions,
the kept/excluded nodes and the calibration set's hash, in the manifest (written last). The same
files run on ONNX Runtime and OpenVINO here and are what ``cmpf build`` gives TensorRT. Nothing
here imports the torch model.
"""
