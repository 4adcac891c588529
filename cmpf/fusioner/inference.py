"""The official Fusioner inference protocol: RGB uint8 image + class names → per-class logits, masks, labels.

``FU:model/full_model.py:108-188`` (``multi_scale_eval`` with ``--test_with_org_resolution``):
- dataset normalisation (albumentations ``Normalize``, PASCAL or COCO statistics; not CLIP's);
- the image stays at its original size; a side shorter than the window is padded (bottom/right) to
  the window with -1.0 in normalised space, so an image smaller than one window is one padded window;
- 224 windows at stride 149, each crop padded to 224 the same way; the logits of overlapping
  windows are summed and divided by the per-pixel count, then cropped to (H, W);
- prediction: ``sigmoid(logit) > 0.5`` strict; with K > 1, argmax over [0.5, sigmoid(l_1..K)]
  (``FU:utils/utils.py::get_preds``, a tie goes to background).

``mode="per-class"`` is the official evaluation (one K=1 fusion pass per class; its masks are the
K independent binary predictions); ``"joint"`` runs all classes in one pass (masks = one-hot labels).
The visual tokens of a window do not depend on the classes, so they are computed once per window.
Everything here takes ``WindowGraphs``: the eager ``Fusioner`` itself, or the exported graphs behind
runners (``cmpf.fusioner.run.RunnerGraphs``), so every backend shares this one protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cmpf.fusioner.config import NORMALISATIONS, FusionerConfig, Mode, SegmentOptions
from cmpf.fusioner.prompts import FusionerInputError, tokenize_class

Window = tuple[int, int, int, int]  # (h0, h1, w0, w1) in the padded image, end exclusive


class WindowGraphs(Protocol):
    """The three graphs of one model (``cmpf.fusioner.graphs``), as the eager ``Fusioner`` names them."""

    cfg: FusionerConfig

    @property
    def device(self) -> torch.device: ...

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised windows → (B, N, D) unit patch tokens."""

    def encode_class(self, template_token_ids: torch.Tensor) -> torch.Tensor:
        """(32, 77) prompt tokens of one class name → (1, D) unit class embedding."""

    def segment_window(self, image_tokens: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens, (K, D) class embeddings → (B, K, S, S) logits."""


@dataclass(frozen=True)
class FusionerSegmentation:
    """Result for one image of H×W pixels and K class names."""

    class_names: tuple[str, ...]
    mode: Mode
    logits: torch.Tensor  # (K, H, W) float32 window-averaged logits (cosine / temperature)
    masks: torch.Tensor  # (K, H, W) bool; per-class: sigmoid > threshold per class; joint: one-hot labels
    labels: torch.Tensor  # (H, W) int64: 0 background, k + 1 = class_names[k]
    windows: tuple[Window, ...]
    text_embeddings: Optional[torch.Tensor] = None  # (K, D) unit class embeddings used
    first_window_tokens: Optional[torch.Tensor] = None  # (1, N, D) unit patch tokens of windows[0]


def check_image(image) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array (numpy, torch or PIL) → numpy; ``FusionerInputError`` otherwise."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.dtype != np.uint8:
        raise FusionerInputError(f"image must be RGB uint8 (H, W, 3), got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise FusionerInputError(f"image must be RGB uint8 (H, W, 3), got shape {tuple(arr.shape)}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise FusionerInputError(f"image is empty: shape {tuple(arr.shape)}")
    return arr


def normalise(image, normalisation: str = "pascal") -> torch.Tensor:
    """RGB uint8 (H, W, 3) → (1, 3, H, W) float32, exactly albumentations 1.1.0 ``Normalize`` in float32.

    ``x = (img - float32(mean) * 255) * reciprocal(float32(std) * 255)`` (``ALB:augmentations/functional.py``).
    """
    arr = check_image(image)
    mean, std = NORMALISATIONS[normalisation]
    m = np.array(mean, dtype=np.float32)
    m *= 255.0
    s = np.array(std, dtype=np.float32)
    s *= 255.0
    x = arr.astype(np.float32)
    x -= m
    x *= np.reciprocal(s, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def check_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(class_names, str):
        raise FusionerInputError(f"class_names must be a list of names, got the string {class_names!r}")
    names = tuple(class_names)
    if not names:
        raise FusionerInputError("no class names given (K=0); pass at least one")
    return names


def class_names_of(vocabulary) -> tuple[str, ...]:
    """A ``cmpf.vocabulary.Vocabulary`` → its K class names, each checked to tokenize within 77 tokens.

    Fusioner has no synonyms (one name per class, ``FU:model/text_encoder.py``): a class with several is refused.
    """
    names = []
    for synonyms in vocabulary.classes:
        if len(synonyms) > 1:
            raise FusionerInputError(f"class {','.join(synonyms)!r} has synonyms; Fusioner takes one name per class "
                                     f"(separate classes with ';', e.g. 'cat;dog')")
        tokenize_class(synonyms[0])  # raises for a name whose prompts exceed 77 tokens
        names.append(synonyms[0])
    return check_class_names(names)


class TextEmbeddingCache:
    """Class name → (D,) class embedding, computed once per name for one model (its text-encoder graph).

    The official code re-encodes the 32 prompts on every forward; the embedding depends only on the
    name and the text tower, so caching gives the same numbers. ``encoded`` counts text-encoder calls.
    """

    def __init__(self, model: WindowGraphs):
        self.model = model
        self._embeddings: dict[str, torch.Tensor] = {}
        self.encoded = 0

    def __len__(self) -> int:
        return len(self._embeddings)

    @torch.no_grad()
    def embed(self, class_names: Sequence[str]) -> torch.Tensor:
        """K class names (verbatim) → (K, D) unit class embeddings on the model's device."""
        names = check_class_names(class_names)
        for name in names:
            if name not in self._embeddings:
                tokens = tokenize_class(name).to(self.model.device)  # raises for a prompt over 77 tokens
                self._embeddings[name] = self.model.encode_class(tokens)[0]
                self.encoded += 1
        return torch.stack([self._embeddings[n] for n in names])


def window_grid(height: int, width: int, window: int, stride: int) -> tuple[Window, ...]:
    """Official window layout over the image padded to at least ``window`` per side.

    ``n = ceil((padded - window) / stride) + 1`` starts ``i * stride`` per axis; the last window may
    overhang the image (its crop is padded). A 375-row image gives rows 0, 149, 298.
    """
    if stride > window:
        raise FusionerInputError(f"stride {stride} > window {window} would leave pixels uncovered")
    ph, pw = max(height, window), max(width, window)
    h_starts = [i * stride for i in range(math.ceil((ph - window) / stride) + 1)]
    w_starts = [i * stride for i in range(math.ceil((pw - window) / stride) + 1)]
    return tuple((h0, min(h0 + window, ph), w0, min(w0 + window, pw)) for h0 in h_starts for w0 in w_starts)


def pad_to(pixels: torch.Tensor, size: int, value: float) -> torch.Tensor:
    """(B, 3, h, w) → (B, 3, max(h, size), max(w, size)), padded bottom/right with ``value``."""
    h, w = pixels.shape[-2:]
    return F.pad(pixels, (0, max(size - w, 0), 0, max(size - h, 0)), value=value)


def _window_logits(model: WindowGraphs, tokens: torch.Tensor, text: torch.Tensor, mode: Mode) -> torch.Tensor:
    """Tokens (1, N, D) of one window → (1, K, S, S) logits; per-class runs K fusion passes with K=1."""
    if mode == "joint":
        return model.segment_window(tokens, text)
    return torch.cat([model.segment_window(tokens, text[k:k + 1]) for k in range(text.shape[0])], dim=1)


@torch.no_grad()
def sliding_window_logits(model: WindowGraphs, pixels: torch.Tensor, text_embeddings: torch.Tensor,
                          options: SegmentOptions = SegmentOptions(), *, keep: Optional[dict] = None,
                          ) -> tuple[torch.Tensor, tuple[Window, ...]]:
    """Window-averaged logits of one normalised image.

    Args:
        pixels: (1, 3, H, W) float32, dataset-normalised, any H, W >= 1.
        text_embeddings: (K, D) unit class embeddings, K >= 1.
        keep: when given, receives ``first_window_tokens`` (1, N, D).
    Returns:
        (1, K, H, W) float32 logits and the windows used (padded-image coordinates).
    """
    if pixels.dim() != 4 or pixels.shape[0] != 1 or pixels.shape[1] != 3 or 0 in pixels.shape[2:]:
        raise FusionerInputError(f"pixels must be (1, 3, H, W) with H, W >= 1, got {tuple(pixels.shape)}")
    if text_embeddings.dim() != 2 or text_embeddings.shape[0] < 1:
        raise FusionerInputError(f"text_embeddings must be (K, D) with K >= 1, got {tuple(text_embeddings.shape)}")
    s = model.cfg.window_size
    h, w = pixels.shape[-2:]
    device = model.device
    padded = pad_to(pixels.to(device=device, dtype=torch.float32), s, options.pad_value)
    ph, pw = padded.shape[-2:]
    windows = window_grid(h, w, s, options.window_stride(s))
    k = text_embeddings.shape[0]
    total = padded.new_zeros(1, k, ph, pw)
    count = padded.new_zeros(1, 1, ph, pw)
    text = text_embeddings.to(device)
    for h0, h1, w0, w1 in windows:
        crop = pad_to(padded[:, :, h0:h1, w0:w1], s, options.pad_value)
        tokens = model.encode_image(crop)
        if keep is not None and "first_window_tokens" not in keep:
            keep["first_window_tokens"] = tokens
        out = _window_logits(model, tokens, text, options.mode)
        total[:, :, h0:h1, w0:w1] += out[:, :, : h1 - h0, : w1 - w0]
        count[:, :, h0:h1, w0:w1] += 1
    return (total / count)[:, :, :h, :w], windows


def predict_labels(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(..., K, H, W) logits → (..., H, W) int64 labels: argmax over [threshold, sigmoid(logits)].

    0 = background; a pixel whose best probability equals the threshold stays background (``get_preds``).
    """
    probs = torch.sigmoid(logits)
    background = torch.full_like(probs[..., :1, :, :], threshold)
    return torch.cat([background, probs], dim=-3).argmax(dim=-3)


def segment(model: WindowGraphs, image, class_names: Sequence[str], options: SegmentOptions = SegmentOptions(),
            *, text_cache: Optional[TextEmbeddingCache] = None) -> FusionerSegmentation:
    """Segment one RGB uint8 (H, W, 3) image with the official protocol.

    Args:
        class_names: K >= 1 names, verbatim (each of the 32 prompts must fit 77 tokens).
        text_cache: reuse class embeddings across calls (must belong to ``model``).
    Raises:
        FusionerInputError: (a ``ValueError``) for a bad image, K=0 or a name over 77 tokens.
    """
    names = check_class_names(class_names)
    pixels = normalise(image, options.normalisation)
    if text_cache is None:
        text_cache = TextEmbeddingCache(model)
    elif text_cache.model is not model:
        raise FusionerInputError("text_cache belongs to another model; create one per model")
    text = text_cache.embed(names)
    kept: dict = {}
    logits, windows = sliding_window_logits(model, pixels, text, options, keep=kept)
    logits = logits[0].cpu()
    labels = predict_labels(logits, options.threshold)
    if options.mode == "per-class":
        masks = torch.sigmoid(logits) > options.threshold
    else:
        masks = F.one_hot(labels, len(names) + 1)[..., 1:].permute(2, 0, 1).bool()
    return FusionerSegmentation(names, options.mode, logits, masks, labels, windows, text.cpu(),
                                kept["first_window_tokens"].cpu())
