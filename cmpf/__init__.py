"""cmpf: deployment toolchain for CMPF (FrozenSeg) and FC-CLIP open-vocabulary segmentation.

Importing the package is cheap and device-free: heavy or optional dependencies (open_clip,
segment-anything, onnxruntime, triton, tensorrt) load inside the functions that need them.
"""

__version__ = "0.1.0"
