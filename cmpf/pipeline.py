"""THE path from images and a vocabulary to segmentations, shared by every backend.

preprocess → encode_text (cached per vocabulary) → encode_image (CLIP, SAM) → decode →
classify masks → ensemble → postprocess. Graph calls go through ``Runner`` objects (named tensors
in and out), so the eager model, ONNX Runtime and AOTInductor run the very same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from cmpf.config import InferenceOptions, ModelConfig
from cmpf.ensemble import geometric_ensemble, valid_mask_weights
from cmpf.postprocess import Segmentation, postprocess
from cmpf.preprocess import ModelInputs, prepare_inputs, resize_shortest_edge
from cmpf.runtime.base import Runner
from cmpf.text import TextCache
from cmpf.vocabulary import Vocabulary


@dataclass
class PipelineResult:
    segmentations: list[Segmentation]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # batch tensors, for parity dumps


def segment(
    images: list[torch.Tensor],
    vocabulary: Vocabulary,
    runners: Mapping[str, Runner],
    cfg: ModelConfig,
    options: InferenceOptions = InferenceOptions(),
    *,
    text_cache: Optional[TextCache] = None,
    device: torch.device | str = "cpu",
) -> PipelineResult:
    """uint8 (3, H0, W0) RGB images → one ``Segmentation`` each (original sizes).

    ``options``: sizes, ensemble weights, thresholds and the seen classes (ensemble α vs β).
    ``text_cache``: text classifiers kept across calls (default: encode the vocabulary now).
    """
    # preprocess: official resize, the CLIP copy (/32-padded) and the SAM copy (1024²)
    inputs = preprocess(images, cfg, options, device)
    text = (text_cache or TextCache(runners["text_encoder"], options.text_batch)).get(vocabulary)
    text_in = {"text_embeddings": text.embeddings.to(device), "synonym_mask": text.synonym_mask.to(device)}
    # encode_image: res2..res5 (B, C_l, H/2^l, W/2^l); SAM neck (B, C, 64, 64)
    feats = runners["clip_image_encoder"]({"pixel_values": inputs.clip_pixels})
    sam = {}
    if cfg.has_sam:
        sam = runners["sam_image_encoder"]({"sam_pixel_values": inputs.sam_pixels})
    # decode: in-vocabulary logits (B, Q, K+1), mask logits (B, Q, H/4, W/4)
    dec = runners["decoder"]({**feats, **sam, **text_in})
    # classify masks with the frozen CLIP head: out-of-vocabulary logits (B, Q, K+1)
    out_vocab = runners["mask_classifier"]({"res5": feats["res5"], "pred_masks": dec["pred_masks"], **text_in})
    # ensemble: (B, Q, K+1) log-probabilities, void last
    alpha, beta = options.ensemble_alpha, options.ensemble_beta
    if options.ensemble_on_valid_mask:
        alpha, beta = valid_mask_weights(dec["pred_masks"], feats["res5"].shape[-2:], alpha, beta)
    seen = options.seen_mask(vocabulary.classes)
    seen_t = torch.tensor(seen, dtype=torch.float32, device=dec["pred_logits"].device)
    logprob = geometric_ensemble(dec["pred_logits"], out_vocab["out_vocab_logits"], seen_t, alpha, beta)
    # postprocess each image at its original size
    is_thing = torch.tensor(vocabulary.is_thing)
    results = [
        postprocess(logprob[i], dec["pred_masks"][i], padded_size=tuple(inputs.clip_pixels.shape[-2:]),
                    image_size=inputs.image_sizes[i], output_size=tuple(images[i].shape[-2:]),
                    is_thing=is_thing, object_mask_threshold=options.object_mask_threshold,
                    overlap_threshold=options.overlap_threshold, topk=options.topk,
                    class_names=vocabulary.names)
        for i in range(len(images))
    ]
    tensors = {"pred_logits": dec["pred_logits"], "pred_masks": dec["pred_masks"],
               "out_vocab_logits": out_vocab["out_vocab_logits"], "mask_cls_logprob": logprob, **sam}
    return PipelineResult(results, tensors)


def preprocess(images: list[torch.Tensor], cfg: ModelConfig, options: InferenceOptions,
               device: torch.device | str = "cpu") -> ModelInputs:
    """The official resize (unless ``options.resize`` is False), then the CLIP and SAM copies."""
    resized = [resize_shortest_edge(im, options.min_size, options.max_size) if options.resize else im
               for im in images]
    return prepare_inputs(resized, divisibility=cfg.size_divisibility, sam_size=cfg.sam_input_size, device=device)
