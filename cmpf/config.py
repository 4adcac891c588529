"""Frozen configuration dataclasses and the named presets (one source for every default).

Axis convention everywhere in cmpf: NCHW tensors, sizes as (H, W).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from cmpf.errors import InputError

# Official normalisations of the RGB 0-255 input (MODEL_SPEC.md fact 2).
CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

KernelImpl = Literal["torch", "triton"]


@dataclass(frozen=True)
class SamConfig:
    """SAM image encoder (segment-anything ``ImageEncoderViT``) plus its prompt encoder / mask decoder."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    out_chans: int = 256
    img_size: int = 1024
    patch_size: int = 16

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError("SAM embed_dim must be divisible by num_heads")
        if any(i >= self.depth for i in self.global_attn_indexes):
            raise ValueError("SAM global_attn_indexes must be < depth")


SAM_VIT_B = SamConfig()


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one CMPF / FC-CLIP model: what defines the network and its weights.

    ``clip_model`` is an open_clip architecture name (``convnext_large_d_320``, ``RN50x64``) or one of
    cmpf's small test towers (``tiny-convnext``, ``tiny-rn``). ``sam=None`` gives FC-CLIP. What a run
    chooses (sizes, thresholds, ensemble weights) is ``InferenceOptions``.
    """

    name: str
    clip_model: str
    clip_quick_gelu: bool = False
    sam: Optional[SamConfig] = SAM_VIT_B
    hidden_dim: int = 256
    num_queries: int = 250
    num_heads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 9  # official DEC_LAYERS 10 minus 1
    enc_layers: int = 6
    enc_dim_feedforward: int = 1024
    enc_points: int = 4
    size_divisibility: int = 32  # the padded CLIP input is a multiple of this (CLIP's stride)
    # kernels: the torch reference paths or the Triton kernels (cmpf.kernels)
    attention_impl: KernelImpl = "torch"
    mask_pooling_impl: KernelImpl = "torch"
    deform_attn_impl: KernelImpl = "torch"

    def __post_init__(self) -> None:
        if self.hidden_dim % self.num_heads:
            raise ValueError("hidden_dim must be divisible by num_heads")
        if self.hidden_dim % 32:
            raise ValueError("hidden_dim must be a multiple of 32 (GroupNorm(32, C))")
        if self.sam is not None and self.sam.out_chans != self.hidden_dim:
            raise ValueError("the SAM neck width must equal hidden_dim (Feature/Query Injector)")
        if self.size_divisibility % 32:
            raise ValueError("size_divisibility must be a multiple of 32 (CLIP stride)")
        for impl in (self.attention_impl, self.mask_pooling_impl, self.deform_attn_impl):
            if impl not in ("torch", "triton"):
                raise ValueError(f"kernel impl must be 'torch' or 'triton', got {impl!r}")

    @property
    def has_sam(self) -> bool:
        return self.sam is not None

    @property
    def sam_input_size(self) -> int:
        """SAM input side (1024 for ViT-B); the SAM copy of every image is warped to this square."""
        return self.sam.img_size if self.sam is not None else 1024

    @property
    def clip_arch(self) -> Literal["convnext", "resnet"]:
        return "convnext" if "convnext" in self.clip_model.lower() else "resnet"


@dataclass(frozen=True)
class SamMaskOptions:
    """``SamAutomaticMaskGenerator``'s settings, with its defaults (the official run: ``OPENSEG_MASKS``).

    ``max_masks`` keeps the largest masks (stable sort by area, descending), as the official
    ``save_sam_masks.py`` keeps 50; None keeps all, in segment-anything's order.

    ``source`` says which SAM image embedding the pipeline prompts: ``"embedding"`` (default) reuses
    the one the pipeline already computed for the decoder (one SAM encoder run per image; the image
    as the pipeline warps it to S × S), ``"image"`` re-encodes the image the way the official offline
    script did (SamPredictor's longest-side resize, in ``channel_order``; crops need it).
    ``channel_order``: the official offline masks were made from BGR, because the vendored
    ``SamPredictor.set_image`` defaults to ``"BGR"`` and flips the RGB input again.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0  # > 0 needs OpenCV (segment-anything's remove_small_regions)
    max_masks: Optional[int] = None
    channel_order: Literal["bgr", "rgb"] = "bgr"
    source: Literal["embedding", "image"] = "embedding"

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be >= 1")
        if self.crop_n_layers < 0 or self.crop_n_points_downscale_factor < 1:
            raise ValueError("crop_n_layers must be >= 0 and crop_n_points_downscale_factor >= 1")
        if self.max_masks is not None and self.max_masks < 1:
            raise ValueError(f"max_masks must be >= 1 or None, got {self.max_masks}")
        if self.channel_order not in ("bgr", "rgb"):
            raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {self.channel_order!r}")
        if self.source not in ("embedding", "image"):
            raise ValueError(f"source must be 'embedding' or 'image', got {self.source!r}")
        if self.crop_n_layers and self.source == "embedding":
            raise ValueError("crops re-encode the image: crop_n_layers > 0 needs source='image'")


# the official offline run (FZ:save_sam_masks.py, MODEL_SPEC.md §7.1), ViT-H weights in the paper
OPENSEG_MASKS = SamMaskOptions(pred_iou_thresh=0.8, stability_score_thresh=0.7, crop_n_points_downscale_factor=2,
                               min_mask_region_area=100, max_masks=50)


@dataclass(frozen=True)
class SamEnsembleOptions:
    """``TEST.SAM_MASK_PRED_ALPHA`` and the keep rule of ``geo_with_sam_inference``.

    ``pooling_pad``: the official zero-padding of the CLIP-resolution SAM masks to a multiple of
    this before pooling (see ``cmpf.sam_ensemble``); None pools the masks as resized.
    """

    alpha: float = 0.2  # weight of the SAM term on unseen classes (queries get 1 - alpha)
    keep_threshold: float = 0.5  # a SAM mask is kept if its max unseen-class probability is > this
    pooling_pad: Optional[int] = 32

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.pooling_pad is not None and self.pooling_pad < 1:
            raise ValueError(f"pooling_pad must be >= 1 or None, got {self.pooling_pad}")


@dataclass(frozen=True)
class InferenceOptions:
    """What one run chooses: input size, ensemble weights, post-processing thresholds, seen classes.

    The official test values are the defaults (MODEL_SPEC.md §1.1, §6.3, §8); benchmarks override
    sizes and thresholds (``cmpf.data.registry.DatasetSpec``). ``seen`` holds the synonyms of the
    training vocabulary: a class of the run's vocabulary is *seen* (ensemble weight α, else β) when
    one of its synonyms is among them (MODEL_SPEC.md §6.2); empty = every class unseen.
    ``sam_ensemble`` turns on the OpenSeg SAM-mask ensemble of the semantic output (MODEL_SPEC.md §7),
    with masks made as ``sam_masks`` says (or given precomputed) and merged as ``sam_merge`` says.
    """

    resize: bool = True  # official ResizeShortestEdge; False feeds the image as is
    min_size: int = 800  # short side of the resized image
    max_size: int = 1333  # cap of its long side
    ensemble_alpha: float = 0.4  # in-vocabulary weight for seen classes
    ensemble_beta: float = 0.8  # ... for unseen classes
    ensemble_on_valid_mask: bool = False  # RN50x64: weights only where the pooled mask is valid
    object_mask_threshold: float = 0.0  # panoptic: minimum query score
    overlap_threshold: float = 0.8  # panoptic: minimum kept fraction of a mask
    topk: int = 100  # instances per image
    text_batch: int = 128  # prompts per text-encoder call
    seen: tuple[str, ...] = ()
    sam_ensemble: bool = False
    sam_masks: SamMaskOptions = SamMaskOptions()
    sam_merge: SamEnsembleOptions = SamEnsembleOptions()

    def __post_init__(self) -> None:
        if self.min_size < 1 or self.max_size < self.min_size:
            raise ValueError(f"sizes must satisfy 1 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if self.topk < 1 or self.text_batch < 1:
            raise ValueError("topk and text_batch must be >= 1")
        if isinstance(self.seen, (list, set, frozenset)):
            object.__setattr__(self, "seen", tuple(sorted(self.seen)))

    def seen_mask(self, classes: tuple[tuple[str, ...], ...]) -> list[bool]:
        """Per class (tuples of synonyms): True when any synonym is in ``seen``."""
        seen = set(self.seen)
        return [not seen.isdisjoint(synonyms) for synonyms in classes]

    def with_seen(self, train_classes: tuple[tuple[str, ...], ...]) -> "InferenceOptions":
        """These options with ``seen`` = every synonym of a training vocabulary's classes."""
        return dataclasses.replace(self, seen=tuple(sorted({s for syns in train_classes for s in syns})))

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "seen": list(self.seen)}

    @staticmethod
    def from_json(data: dict) -> "InferenceOptions":
        known = {f.name for f in dataclasses.fields(InferenceOptions)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"inference options have fields this cmpf does not know: {unknown}")
        nested = {"seen": tuple(data.get("seen", ()))}
        if "sam_masks" in data:
            nested["sam_masks"] = SamMaskOptions(**data["sam_masks"])
        if "sam_merge" in data:
            nested["sam_merge"] = SamEnsembleOptions(**data["sam_merge"])
        return InferenceOptions(**{**data, **nested})


_TINY_SAM = SamConfig(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), out_chans=64, img_size=256)
_TINY = dict(
    hidden_dim=64,
    num_queries=20,
    dim_feedforward=128,
    enc_layers=2,
    enc_dim_feedforward=128,
    sam=_TINY_SAM,
)

PRESETS: dict[str, ModelConfig] = {
    "frozenseg-convnext-large": ModelConfig("frozenseg-convnext-large", "convnext_large_d_320"),
    "frozenseg-rn50x64": ModelConfig("frozenseg-rn50x64", "RN50x64", clip_quick_gelu=True),
    "fcclip-convnext-large": ModelConfig("fcclip-convnext-large", "convnext_large_d_320", sam=None),
    "fcclip-rn50x64": ModelConfig("fcclip-rn50x64", "RN50x64", clip_quick_gelu=True, sam=None),
    "tiny": ModelConfig("tiny", "tiny-convnext", **_TINY),
    "tiny-rn": ModelConfig("tiny-rn", "tiny-rn", clip_quick_gelu=True, **_TINY),
    "tiny-fcclip": ModelConfig("tiny-fcclip", "tiny-convnext", **{**_TINY, "sam": None}),
}

# The official inference settings that differ per preset: RN50x64 towers ensemble only where the
# pooled mask is valid (their attention pool sees invalid cells); the tiny presets keep 20 instances.
_RN_OPTIONS = InferenceOptions(ensemble_on_valid_mask=True)
_TINY_OPTIONS = InferenceOptions(topk=20)
PRESET_OPTIONS: dict[str, InferenceOptions] = {
    "frozenseg-rn50x64": _RN_OPTIONS,
    "fcclip-rn50x64": _RN_OPTIONS,
    "tiny": _TINY_OPTIONS,
    "tiny-rn": dataclasses.replace(_RN_OPTIONS, topk=20),
    "tiny-fcclip": _TINY_OPTIONS,
}


def default_options(model: str | ModelConfig) -> InferenceOptions:
    """The official inference options of a preset (``InferenceOptions()`` for other configs)."""
    name = model.name if isinstance(model, ModelConfig) else model
    return PRESET_OPTIONS.get(name, InferenceOptions())


def resolve_preset(preset, presets: dict, overrides: dict, what: str = "model"):
    """A preset name from ``presets`` (or a config passed through) with ``dataclasses.replace`` overrides.

    Shared by every model family; an unknown name is an ``InputError`` listing the presets.
    """
    if not isinstance(preset, str):
        cfg = preset
    elif preset in presets:
        cfg = presets[preset]
    else:
        raise InputError(f"unknown {what} preset {preset!r}; choose one of: {', '.join(presets)}")
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def get_config(preset: str | ModelConfig, **overrides) -> ModelConfig:
    """Resolve a preset name (or pass a config through) and apply ``dataclasses.replace`` overrides."""
    return resolve_preset(preset, PRESETS, overrides)
