"""Automatic SAM masks through the ``sam_mask_decoder`` graph, and the precomputed-mask loaders.

``generate_masks`` has the semantics of segment-anything's ``SamAutomaticMaskGenerator``: a point
grid, batched single-point prompts with multimask output, the predicted-IoU and stability-score
filters, box NMS, optional crops and small-region clean-up. The SAM networks run through runners
(named tensors in and out, any backend): ``decoder`` has the ``sam_mask_decoder`` interface
(``cmpf.model.sam_mask_decoder``) and ``encoder`` the ``sam_image_encoder`` one; everything else is
torch here, using segment-anything's own library functions (``segment_anything.utils.amg``).

Two entry points:
- ``generate_masks(image, encoder, decoder, options)``: the image through SamPredictor's
  preprocessing (longest side to S, bottom-right padding), as the official offline masks were made
  (MODEL_SPEC.md §7.1); crops need this one.
- ``generate_masks_from_embedding(decoder, sam_embedding, frame, options)``: an embedding the
  pipeline already computed, with the frame that says where the image lies in the S × S input.

``load_masks(path, image_size)`` reads the official per-image ``.pkl`` records (without executing
code) or an ``.npz`` with ``masks``; both give the same ``SamMasks`` the generator returns.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    MaskData, batch_iterator, batched_mask_to_box, build_all_layer_point_grids,
    calculate_stability_score, generate_crop_boxes, is_box_near_crop_edge, remove_small_regions,
    rle_to_mask, uncrop_boxes_xyxy, uncrop_masks, uncrop_points,
)
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.ops import batched_nms, box_area

from cmpf.config import OPENSEG_MASKS, SamMaskOptions  # noqa: F401 (re-exported)
from cmpf.errors import InputError, MissingDependency
from cmpf.preprocess import normalize_sam

Runner = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]

# graph I/O names: the sam_mask_decoder spec (cmpf.model.sam_mask_decoder) and sam_image_encoder
# (cmpf.spec); tests/unit/test_sam_masks.py checks they match the specs
DECODER_INPUTS = ("sam_embedding", "point_coords", "point_labels")
DECODER_OUTPUTS = ("mask_logits", "iou_predictions")
ENCODER_INPUT, ENCODER_OUTPUT = "sam_pixel_values", "sam_embedding"
MASK_THRESHOLD = Sam.mask_threshold  # 0.0: a pixel is in the mask where its logit is > 0
OUTSIDE_LOGIT = -20.0  # logit of pixels SAM did not see (outside a crop) or outside a binary mask
INSIDE_LOGIT = 20.0  # logit of the pixels of a binary mask (sigmoid = 1 - 2e-9)


@dataclass(frozen=True)
class SamFrame:
    """Where an image of ``original_size`` (H0, W0) lies in the S × S SAM input: its top-left
    ``input_size`` (h, w) region, scaled without preserving the aspect ratio if h/w ≠ H0/W0."""

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    sam_size: int

    @staticmethod
    def predictor(original_size: tuple[int, int], sam_size: int) -> "SamFrame":
        """SamPredictor's geometry: longest side to ``sam_size``, padded bottom-right."""
        h, w = ResizeLongestSide.get_preprocess_shape(original_size[0], original_size[1], sam_size)
        return SamFrame(tuple(original_size), (h, w), sam_size)

    @staticmethod
    def warped(original_size: tuple[int, int], image_size: tuple[int, int], padded_size: tuple[int, int],
               sam_size: int) -> "SamFrame":
        """The pipeline's geometry: the resized ``image_size`` inside ``padded_size``, warped to S × S
        (MODEL_SPEC.md fact 2); the region is rounded to whole pixels (≤ 0.5 px in the S frame)."""
        h = round(sam_size * image_size[0] / padded_size[0])
        w = round(sam_size * image_size[1] / padded_size[1])
        return SamFrame(tuple(original_size), (h, w), sam_size)

    def to_input_frame(self, points: np.ndarray) -> np.ndarray:
        """(P, 2) XY in the original image → the S frame (``ResizeLongestSide.apply_coords``), float64."""
        scale = np.array([self.input_size[1] / self.original_size[1], self.input_size[0] / self.original_size[0]])
        return points.astype(np.float64) * scale


@dataclass(frozen=True)
class SamMasks:
    """Masks of one image, at its original size (H0, W0), on the device of the computation.

    ``logits`` are the full-resolution logits before the small-region clean-up (the vendored
    generator's ``preds``, which the official merge reads); ``boxes`` and ``crop_boxes`` are XYWH.
    Loaded files lack what they do not store: NaN scores and points.
    """

    masks: torch.Tensor  # (N, H0, W0) bool
    logits: torch.Tensor  # (N, H0, W0) float32
    predicted_iou: torch.Tensor  # (N,) float32
    stability_score: torch.Tensor  # (N,) float32
    boxes: torch.Tensor  # (N, 4) float32 XYWH
    point_coords: torch.Tensor  # (N, 2) float32 XY, original image pixels
    crop_boxes: torch.Tensor  # (N, 4) float32 XYWH

    def __len__(self) -> int:
        return self.masks.shape[0]

    @property
    def areas(self) -> torch.Tensor:
        """(N,) int64 pixel counts of ``masks``."""
        return self.masks.flatten(1).sum(1)


def predictor_pixels(image: torch.Tensor, sam_size: int,
                     channel_order: Literal["bgr", "rgb"]) -> tuple[torch.Tensor, SamFrame]:
    """SamPredictor's preprocessing: (3, H0, W0) uint8 RGB → (1, 3, S, S) float32 SAM-normalised.

    Channels are flipped first for ``"bgr"``; the resize is segment-anything's ``apply_image``
    (Pillow bilinear), the padding bottom-right with zeros after normalisation (``Sam.preprocess``).
    """
    hwc = image.permute(1, 2, 0).cpu().numpy()
    if channel_order == "bgr":
        hwc = hwc[..., ::-1]
    resized = torch.from_numpy(ResizeLongestSide(sam_size).apply_image(np.ascontiguousarray(hwc)))
    x = normalize_sam(resized.permute(2, 0, 1).to(image.device))
    x = F.pad(x, (0, sam_size - x.shape[-1], 0, sam_size - x.shape[-2]))
    return x[None], SamFrame.predictor((image.shape[1], image.shape[2]), sam_size)


def upscale_logits(low_res: torch.Tensor, frame: SamFrame) -> torch.Tensor:
    """(N, C, 4g, 4g) low-res logits → (N, C, H0, W0): ``Sam.postprocess_masks`` (to S × S, crop the
    image region, resize to the original size; bilinear)."""
    x = F.interpolate(low_res, (frame.sam_size, frame.sam_size), mode="bilinear", align_corners=False)
    x = x[..., : frame.input_size[0], : frame.input_size[1]]
    return F.interpolate(x, frame.original_size, mode="bilinear", align_corners=False)


def generate_masks(image: torch.Tensor, encoder: Runner, decoder: Runner, options: SamMaskOptions,
                   sam_size: int) -> SamMasks:
    """``SamAutomaticMaskGenerator.generate`` on a (3, H0, W0) uint8 RGB image, crops included.

    Each crop is encoded (``encoder``: ``sam_pixel_values`` (1, 3, S, S) → ``sam_embedding``) and
    prompted on its point grid through ``decoder``; duplicates across crops are removed by NMS
    preferring smaller crops.
    """
    _check_small_region_dependency(options)
    orig_size = (int(image.shape[1]), int(image.shape[2]))
    crop_boxes, layer_idxs = generate_crop_boxes(orig_size, options.crop_n_layers, options.crop_overlap_ratio)
    data = MaskData()
    for crop_box, layer in zip(crop_boxes, layer_idxs):
        x0, y0, x1, y1 = crop_box
        pixels, frame = predictor_pixels(image[:, y0:y1, x0:x1], sam_size, options.channel_order)
        embedding = encoder({ENCODER_INPUT: pixels})[ENCODER_OUTPUT]
        data.cat(_crop_masks(decoder, embedding, frame, crop_box, layer, orig_size, options))
    if len(crop_boxes) > 1:
        scores = 1 / box_area(data["crop_boxes"].float())  # prefer masks from smaller crops
        keep = batched_nms(data["boxes"].float(), scores.to(data["boxes"].device),
                           torch.zeros(len(data["boxes"]), device=data["boxes"].device), options.crop_nms_thresh)
        data.filter(keep)
    return _finish(data, options, image.device)


def generate_masks_from_embedding(decoder: Runner, sam_embedding: torch.Tensor, frame: SamFrame,
                                  options: SamMaskOptions) -> SamMasks:
    """Masks from one image's ``sam_embedding`` (1, C, g, g), the whole image as one crop.

    ``frame`` says where the image lies in the S × S input the embedding was computed from
    (``SamFrame.predictor`` or ``SamFrame.warped``); ``options.channel_order`` does not apply (the
    embedding is already computed). Crops need the image: use ``generate_masks``.
    """
    if options.crop_n_layers:
        raise ValueError("crop_n_layers > 0 needs the image (each crop is encoded): use generate_masks")
    _check_small_region_dependency(options)
    h, w = frame.original_size
    data = _crop_masks(decoder, sam_embedding, frame, [0, 0, w, h], 0, (h, w), options)
    return _finish(data, options, sam_embedding.device)


def _check_small_region_dependency(options: SamMaskOptions) -> None:
    if options.min_mask_region_area > 0:
        try:
            import cv2  # noqa: F401, PLC0415 (segment-anything's remove_small_regions uses it)
        except ImportError:
            raise MissingDependency("min_mask_region_area > 0 needs OpenCV (segment-anything's "
                                    "remove_small_regions); pip install opencv-python-headless") from None


def _crop_masks(decoder: Runner, embedding: torch.Tensor, frame: SamFrame, crop_box: list[int], layer: int,
                orig_size: tuple[int, int], options: SamMaskOptions) -> MaskData:
    """``SamAutomaticMaskGenerator._process_crop`` after ``set_image``: batches, NMS, uncrop."""
    crop_h, crop_w = frame.original_size
    grid = build_all_layer_point_grids(options.points_per_side, options.crop_n_layers,
                                       options.crop_n_points_downscale_factor)[layer]
    points_for_image = grid * np.array([[crop_w, crop_h]])
    data = MaskData()
    for (points,) in batch_iterator(options.points_per_batch, points_for_image):
        data.cat(_batch_masks(decoder, embedding, points, frame, crop_box, orig_size, options))
    keep = batched_nms(data["boxes"].float(), data["iou_preds"],
                       torch.zeros(len(data["boxes"]), device=data["boxes"].device), options.box_nms_thresh)
    data.filter(keep)
    data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
    data["points"] = uncrop_points(data["points"], crop_box)
    data["crop_boxes"] = torch.tensor(crop_box, device=embedding.device).expand(len(data["iou_preds"]), 4)
    return data


def _batch_masks(decoder: Runner, embedding: torch.Tensor, points: np.ndarray, frame: SamFrame,
                 crop_box: list[int], orig_size: tuple[int, int], options: SamMaskOptions) -> MaskData:
    """``SamAutomaticMaskGenerator._process_batch``: one batch of (P, 2) points in the crop frame."""
    device = embedding.device
    coords = torch.as_tensor(frame.to_input_frame(points), dtype=torch.float32, device=device)[:, None, :]
    labels = torch.ones(coords.shape[0], 1, dtype=torch.float32, device=device)
    out = decoder(dict(zip(DECODER_INPUTS, (embedding, coords, labels))))
    low_res, iou_preds = (out[name] for name in DECODER_OUTPUTS)  # (P, 3, 4g, 4g), (P, 3)
    logits = upscale_logits(low_res, frame)  # (P, 3, h, w) in the crop frame
    data = MaskData(logits=logits.flatten(0, 1), iou_preds=iou_preds.flatten(0, 1),
                    points=torch.as_tensor(points.repeat(logits.shape[1], axis=0), device=device))
    del logits, low_res
    if options.pred_iou_thresh > 0.0:
        data.filter(data["iou_preds"] > options.pred_iou_thresh)
    data["stability_score"] = calculate_stability_score(data["logits"], MASK_THRESHOLD,
                                                        options.stability_score_offset)
    if options.stability_score_thresh > 0.0:
        data.filter(data["stability_score"] >= options.stability_score_thresh)
    data["masks"] = data["logits"] > MASK_THRESHOLD
    data["boxes"] = batched_mask_to_box(data["masks"])
    keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_size[1], orig_size[0]])
    if not torch.all(keep):
        data.filter(keep)
    data["masks"] = uncrop_masks(data["masks"], crop_box, *orig_size)
    data["logits"] = _uncrop_logits(data["logits"], crop_box, orig_size)
    return data


def _uncrop_logits(logits: torch.Tensor, crop_box: list[int], orig_size: tuple[int, int]) -> torch.Tensor:
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_size[1], orig_size[0]):
        return logits
    pad = (x0, orig_size[1] - x1, y0, orig_size[0] - y1)
    return F.pad(logits, pad, value=OUTSIDE_LOGIT)


def _finish(data: MaskData, options: SamMaskOptions, device: torch.device) -> SamMasks:
    """Small-region clean-up (``postprocess_small_regions``), the largest ``max_masks``, ``SamMasks``."""
    if options.min_mask_region_area > 0 and len(data["iou_preds"]):
        _remove_small_regions(data, options.min_mask_region_area, max(options.box_nms_thresh,
                                                                       options.crop_nms_thresh))
    if options.max_masks is not None:
        areas = data["masks"].flatten(1).sum(1)
        order = torch.argsort(areas, descending=True, stable=True)[: options.max_masks]
        data.filter(order)
    f32 = lambda x: torch.as_tensor(x).to(device=device, dtype=torch.float32)  # noqa: E731
    return SamMasks(masks=data["masks"].to(device), logits=f32(data["logits"]), predicted_iou=f32(data["iou_preds"]),
                    stability_score=f32(data["stability_score"]), boxes=f32(_xywh(data["boxes"])),
                    point_coords=f32(data["points"]), crop_boxes=f32(_xywh(data["crop_boxes"])))


def _xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) XYXY → XYWH (segment-anything's ``box_xyxy_to_xywh``, which takes one box)."""
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


def _remove_small_regions(data: MaskData, min_area: int, nms_thresh: float) -> None:
    """``SamAutomaticMaskGenerator.postprocess_small_regions`` on boolean masks (edits ``data``)."""
    new_masks, scores = [], []
    for mask in data["masks"].cpu().numpy():
        mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
        mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
        new_masks.append(torch.as_tensor(mask))
        scores.append(float(not (changed_holes or changed_islands)))  # NMS prefers unchanged masks
    masks = torch.stack(new_masks).to(data["masks"].device)
    boxes = batched_mask_to_box(masks)
    keep = batched_nms(boxes.float(), torch.as_tensor(scores, device=boxes.device),
                       torch.zeros(len(boxes), device=boxes.device), nms_thresh)
    data["masks"] = masks
    data["boxes"] = boxes.to(data["boxes"])
    data.filter(keep)


# -- precomputed masks --------------------------------------------------------------------------

class MasksFileError(InputError):
    """A precomputed-masks file that cannot be used; the message names the file and the problem."""


_NUMPY_GLOBALS = {"ndarray": np.ndarray, "dtype": np.dtype, "_reconstruct": np._core.multiarray._reconstruct,
                  "scalar": np._core.multiarray.scalar, "_frombuffer": np._core.numeric._frombuffer}
_SAFE_GLOBALS = {
    **{(m, n): _NUMPY_GLOBALS[n] for m in ("numpy",) for n in ("ndarray", "dtype")},
    **{(f"numpy.{c}.multiarray", n): _NUMPY_GLOBALS[n] for c in ("core", "_core") for n in ("_reconstruct", "scalar")},
    **{(f"numpy.{c}.numeric", "_frombuffer"): _NUMPY_GLOBALS["_frombuffer"] for c in ("core", "_core")},
    **{(m, t.__name__): t for m in ("builtins", "__builtin__")
       for t in (list, dict, tuple, set, frozenset, bytearray, complex)},
    ("_codecs", "encode"): __import__("codecs").encode,  # bytes in protocol-2 pickles
}


class _RecordUnpickler(pickle.Unpickler):
    """Allows only numpy arrays, dtypes and scalars and builtin containers: loading runs no code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays and builtin types)")
        return _SAFE_GLOBALS[(module, name)]


def load_masks(path: str | Path, image_size: tuple[int, int]) -> SamMasks:
    """Masks of one image from an official ``.pkl`` (records of the vendored generator) or an ``.npz``.

    ``.pkl``: a list of dicts, each with ``preds`` (H0, W0) logits and/or ``segmentation`` (an
    (H0, W0) array or an RLE); logits are ``preds`` when present, else the binary mask as
    ±``INSIDE_LOGIT``. ``.npz``: ``masks`` (N, H0, W0), bool/integer (binary) or float (logits).
    Raises ``MasksFileError`` (a ``ValueError``) for another image size, no masks, or bad content.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        logits, masks, records = _read_pkl(path)
    elif suffix == ".npz":
        logits, masks, records = _read_npz(path)
    else:
        raise MasksFileError(f"{path}: unknown masks format {suffix!r}; expected .pkl or .npz")
    if masks.shape[0] == 0:
        raise MasksFileError(f"{path}: the file holds no masks")
    if tuple(masks.shape[1:]) != tuple(image_size):
        got = masks.shape[1:]
        raise MasksFileError(f"{path}: masks are {got[0]}x{got[1]} but the image is {image_size[0]}x{image_size[1]}")
    n = masks.shape[0]
    return SamMasks(masks=masks, logits=logits,
                    predicted_iou=_record_values(path, records, "predicted_iou", n, 1)[:, 0],
                    stability_score=_record_values(path, records, "stability_score", n, 1)[:, 0],
                    boxes=_xywh(batched_mask_to_box(masks)).float(),
                    point_coords=_record_values(path, records, "point_coords", n, 2),  # [[x, y]] per record
                    crop_boxes=_record_values(path, records, "crop_box", n, 4))


def _record_values(path: Path, records: list[dict], key: str, n: int, width: int) -> torch.Tensor:
    """(n, width) float32 of one numeric record field; NaN where a record (or an .npz) lacks it."""
    rows = []
    for i, r in enumerate(records or [{}] * n):
        try:
            row = np.asarray(r[key], dtype=np.float64).ravel() if key in r else np.full(width, np.nan)
        except (TypeError, ValueError):
            row = None
        if row is None or row.size != width:
            raise MasksFileError(f"{path}: record {i} {key!r} must hold {width} number(s), got {r[key]!r}")
        rows.append(row)
    return torch.tensor(np.stack(rows), dtype=torch.float32)


def _read_pkl(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    try:
        with open(path, "rb") as f:
            records = _RecordUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise MasksFileError(f"{path}: not a readable masks pickle ({e})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise MasksFileError(f"{path}: expected a list of mask records (dicts), got {type(records).__name__}")
    if not records:
        return torch.zeros(0, 0, 0), torch.zeros(0, 0, 0, dtype=torch.bool), []
    masks, logits = [], []
    for i, r in enumerate(records):
        if "segmentation" not in r and "preds" not in r:
            raise MasksFileError(f"{path}: record {i} has neither 'segmentation' nor 'preds'")
        seg = _decode_segmentation(path, i, r["segmentation"]) if "segmentation" in r else None
        pred = _array(path, f"record {i} 'preds'", r["preds"], 2) if "preds" in r else None
        masks.append(seg if seg is not None else pred > MASK_THRESHOLD)
        logits.append(pred.float() if pred is not None else _binary_logits(seg))
    sizes = sorted({tuple(m.shape) for m in masks + logits})
    if len(sizes) > 1:
        raise MasksFileError(f"{path}: the records' masks differ in size ({sizes})")
    return torch.stack(logits), torch.stack(masks), records


def _decode_segmentation(path: Path, i: int, seg) -> torch.Tensor:
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if isinstance(seg["counts"], list):  # uncompressed RLE
            return torch.from_numpy(rle_to_mask(seg))
        from pycocotools import mask as mask_utils  # noqa: PLC0415 (coco_rle, the official output_mode)

        counts = seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]
        return torch.from_numpy(mask_utils.decode({"size": seg["size"], "counts": counts}).astype(bool))
    return _array(path, f"record {i} 'segmentation'", seg, 2) != 0


def _read_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "masks" not in npz.files:
                raise MasksFileError(f"{path}: no 'masks' array (arrays: {npz.files})")
            masks = _array(path, "'masks'", npz["masks"], 3)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, MasksFileError):
            raise
        raise MasksFileError(f"{path}: not a readable .npz ({e})") from None
    if masks.is_floating_point():
        return masks.float(), masks > MASK_THRESHOLD, []
    binary = masks != 0
    return torch.stack([_binary_logits(m) for m in binary]) if len(binary) else masks.float(), binary, []


def _array(path: Path, what: str, x, ndim: int) -> torch.Tensor:
    if not isinstance(x, np.ndarray) or x.ndim != ndim or x.dtype.kind not in "biuf":
        desc = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise MasksFileError(f"{path}: {what} must be a {ndim}-D numeric array, got {desc}")
    return torch.from_numpy(np.array(x))


def _binary_logits(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) bool → ±20 logits (sigmoid 1 - 2e-9 inside, 2e-9 outside)."""
    return torch.where(mask, INSIDE_LOGIT, OUTSIDE_LOGIT).float()
