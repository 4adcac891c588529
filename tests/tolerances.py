"""THE tolerance table. Logits and features: relative error ||a - b||₂ / ||b||₂. Masks: IoU.

Why L2-relative: the decoder's masked attention makes float32 results chaotic at the 1e-3
max-abs level (the official float32 run differs from a float64 run of the same weights by 1.7e-3
max-abs on pred_logits), while the L2-relative error stays ~2e-5.
"""

# (backend, precision) -> relative error bound for float tensors
REL = {
    ("golden", "fp32"): 1e-4,  # official float32 outputs, ../shared/reference/golden
    ("golden", "fp16-stored"): 2e-3,  # golden tensors stored as float16 (quantisation ~2.4e-4 / value)
    ("torch", "fp32"): 1e-5,  # eager vs eager re-run / wrappers vs modules
    ("onnxruntime", "fp32"): 1e-4,
    ("aoti", "fp32"): 1e-4,
    ("onnxruntime", "fp16"): 2e-2,
    ("onnxruntime", "int8"): 1e-1,
}
MASK_IOU = 0.99  # binarised (logit > 0) masks, fp32 backends
MASK_IOU_LOW_PRECISION = 0.9
SEMANTIC_GAP = 1e-5  # semantic argmax compared only where the top-2 score gap exceeds this


def rel_error(a, b) -> float:
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def mask_iou(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
