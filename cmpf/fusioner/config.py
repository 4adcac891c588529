"""Fusioner architecture config, the named presets and the inference options (one home for each default).

Architecture (``FusionerConfig``: towers, widths, depths, the head temperature) is kept apart from what a
run chooses (``SegmentOptions``: mode, dataset normalisation, stride, pad value, threshold). Facts and
upstream paths: ``shared/docs/FUSIONER_SPEC.md`` (``FU:`` = chaofanma/Fusioner @ 01985ed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from cmpf.config import resolve_preset

Mode = Literal["per-class", "joint"]
Normalisation = Literal["pascal", "coco"]

# albumentations ``Normalize`` statistics of the official dataset code, on RGB / 255
# (``FU:dataset/augumenter.py:43-46``); not CLIP's normalisation.
NORMALISATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "pascal": ((0.4554, 0.4298, 0.3955), (0.1181, 0.1189, 0.1338)),
    "coco": ((0.4650, 0.4357, 0.3973), (0.1152, 0.1153, 0.1352)),
}


@dataclass(frozen=True)
class FusionerConfig:
    """Architecture of one Fusioner model.

    ``clip_model`` is an open_clip architecture name (``ViT-L-14-quickgelu``) or cmpf's small test
    towers (``tiny-vit``). The CLIP image tower sees exactly ``window_size`` squares: its positional
    table is not interpolated (``FU:model/image_encoder.py``), hence the sliding window.
    """

    name: str
    clip_model: str
    clip_embed_dim: int = 768  # CLIP joint embedding width (visual tokens and text embeddings)
    clip_patch_size: int = 14
    window_size: int = 224  # CLIP input side = decoder output side (``args.target_size``)
    fusion_width: int = 512  # d_model of the fusion transformer = decoder channels
    fusion_layers: int = 12
    fusion_heads: int = 8
    fusion_mlp_ratio: int = 4  # d_ff = 4 * d_model
    temperature: float = 0.07  # cosine / temperature, a constant (``FU:configs/__init__.py:29``)

    def __post_init__(self) -> None:
        if self.fusion_width % self.fusion_heads:
            raise ValueError("fusion_width must be divisible by fusion_heads")
        if self.window_size % self.clip_patch_size:
            raise ValueError("window_size must be a multiple of clip_patch_size")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")

    @property
    def grid_size(self) -> int:
        """Patch grid side of one window (16 for 224 / 14)."""
        return self.window_size // self.clip_patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


PRESETS: dict[str, FusionerConfig] = {
    # the only model in the official code: CLIP ViT-L/14 (OpenAI, QuickGELU) towers, frozen
    "fusioner-vitl14": FusionerConfig("fusioner-vitl14", "ViT-L-14-quickgelu"),
    # same code paths, random weights, CPU-fast: for tests
    "tiny-fusioner": FusionerConfig(
        "tiny-fusioner", "tiny-vit", clip_embed_dim=32, fusion_width=16, fusion_layers=2, fusion_heads=2
    ),
}


def get_config(preset: str | FusionerConfig, **overrides) -> FusionerConfig:
    """Resolve a preset name (or pass a config through) and apply ``dataclasses.replace`` overrides."""
    return resolve_preset(preset, PRESETS, overrides, "Fusioner")


@dataclass(frozen=True)
class SegmentOptions:
    """What one inference run chooses; the defaults are the official evaluation (``--test_with_org_resolution``).

    ``mode="per-class"`` runs one fusion pass per class (K=1, the only evaluated setting);
    ``"joint"`` puts all K classes in one pass (the text tokens attend to each other, so logits
    differ from per-class). ``stride=None`` is the official ``int(window * 2 / 3)`` (149 for 224).
    ``pad_value`` is in normalised space: ``-pad_mean / pad_std`` with 0.5 / 0.5
    (``FU:model/full_model.py:31-32, 183``).
    """

    mode: Mode = "per-class"
    normalisation: Normalisation = "pascal"
    stride: Optional[int] = None
    pad_value: float = -1.0
    threshold: float = 0.5  # on sigmoid(logit); strict, a tie is background (``FU:utils/utils.py:90-100``)

    def __post_init__(self) -> None:
        if self.mode not in ("per-class", "joint"):
            raise ValueError(f"mode must be 'per-class' or 'joint', got {self.mode!r}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {sorted(NORMALISATIONS)}, got {self.normalisation!r}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def window_stride(self, window_size: int) -> int:
        return self.stride if self.stride is not None else int(window_size * 2.0 / 3.0)
