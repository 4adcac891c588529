"""THE path from images and a vocabulary to segmentations, shared by every backend.

preprocess → encode_text (cached per vocabulary) → encode_image (CLIP, SAM) → decode →
classify masks → ensemble → postprocess. Graph calls go through ``Runner`` objects (named tensors
in and out), so the eager model, ONNX Runtime and AOTInductor run the very same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from cmpf.config import ModelConfig
from cmpf.ensemble import geometric_ensemble, valid_mask_weights
from cmpf.postprocess import Segmentation, postprocess
from cmpf.preprocess import prepare_inputs, resize_shortest_edge
from cmpf.runtime.base import Runner
from cmpf.text import TextClassifier, from_synonym_embeddings, synonym_embeddings, tokenize
from cmpf.vocabulary import Vocabulary


@dataclass(frozen=True)
class PipelineOptions:
    resize: bool = True  # official ResizeShortestEdge; False feeds the image as is
    min_size: Optional[int] = None  # override the model's test short side (per-benchmark values)
    max_size: Optional[int] = None
    text_batch: int = 128


@dataclass
class PipelineResult:
    segmentations: list[Segmentation]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # batch tensors, for parity dumps


class TextCache:
    """Text classifiers per vocabulary (the text encoder runs once per vocabulary)."""

    def __init__(self):
        self._cache: dict[tuple, TextClassifier] = {}

    def get(self, vocabulary: Vocabulary, runner: Runner, batch: int = 128) -> TextClassifier:
        key = vocabulary.classes
        if key not in self._cache:
            tokens = tokenize(vocabulary.prompts())
            feats = torch.cat([runner({"token_ids": tokens[i:i + batch]})["text_features"]
                               for i in range(0, tokens.shape[0], batch)])
            self._cache[key] = from_synonym_embeddings(synonym_embeddings(feats), vocabulary.num_synonyms)
        return self._cache[key]


def segment(
    images: list[torch.Tensor],
    vocabulary: Vocabulary,
    runners: Mapping[str, Runner],
    cfg: ModelConfig,
    seen: list[bool],
    options: PipelineOptions = PipelineOptions(),
    text: Optional[TextClassifier] = None,
    device: torch.device | str = "cpu",
) -> PipelineResult:
    """uint8 (3, H0, W0) RGB images → one ``Segmentation`` each (original sizes).

    ``seen``: per class, True if the class is in the training vocabulary (ensemble α vs β).
    ``text``: a precomputed text classifier (skips the text encoder).
    """
    # preprocess: official resize, the CLIP copy (/32-padded) and the SAM copy (1024²)
    short, long = options.min_size or cfg.min_size_test, options.max_size or cfg.max_size_test
    resized = [resize_shortest_edge(im, short, long) if options.resize else im for im in images]
    inputs = prepare_inputs(resized, divisibility=cfg.size_divisibility, sam_size=cfg.sam_input_size, device=device)
    if text is None:
        text = TextCache().get(vocabulary, runners["text_encoder"], options.text_batch)
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
    alpha, beta = cfg.ensemble_alpha, cfg.ensemble_beta
    if cfg.ensemble_on_valid_mask:
        alpha, beta = valid_mask_weights(dec["pred_masks"], feats["res5"].shape[-2:], alpha, beta)
    seen_t = torch.tensor(seen, dtype=torch.float32, device=dec["pred_logits"].device)
    logprob = geometric_ensemble(dec["pred_logits"], out_vocab["out_vocab_logits"], seen_t, alpha, beta)
    # postprocess each image at its original size
    is_thing = torch.tensor(vocabulary.is_thing)
    results = [
        postprocess(logprob[i], dec["pred_masks"][i], padded_size=tuple(inputs.clip_pixels.shape[-2:]),
                    image_size=inputs.image_sizes[i], output_size=tuple(images[i].shape[-2:]),
                    is_thing=is_thing, object_mask_threshold=cfg.object_mask_threshold,
                    overlap_threshold=cfg.overlap_threshold, topk=cfg.test_topk_per_image,
                    class_names=vocabulary.names)
        for i in range(len(images))
    ]
    tensors = {"pred_logits": dec["pred_logits"], "pred_masks": dec["pred_masks"],
               "out_vocab_logits": out_vocab["out_vocab_logits"], "mask_cls_logprob": logprob, **sam}
    return PipelineResult(results, tensors)
