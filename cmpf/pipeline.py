"""THE path from images and a vocabulary to segmentations, shared by every backend.

preprocess → encode_text (cached per vocabulary) → encode_image (CLIP, SAM) → decode →
classify masks → ensemble → [SAM masks, classified and merged into the semantic output] →
postprocess. Graph calls go through ``Runner`` objects (named tensors in and out), so the eager
model, ONNX Runtime and AOTInductor run the very same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch

from cmpf.config import InferenceOptions, ModelConfig
from cmpf.ensemble import geometric_ensemble, valid_mask_weights
from cmpf.errors import InputError
from cmpf.postprocess import Segmentation, postprocess
from cmpf.preprocess import ModelInputs, prepare_inputs, resize_shortest_edge
from cmpf.runtime.base import Runner
from cmpf.text import TextCache
from cmpf.vocabulary import Vocabulary


@dataclass
class PipelineResult:
    segmentations: list[Segmentation]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # batch tensors, for parity dumps
    sam_masks: list = field(default_factory=list)  # per image, ``cmpf.sam_masks.SamMasks`` of the ensemble


def segment(
    images: list[torch.Tensor],
    vocabulary: Vocabulary,
    runners: Mapping[str, Runner],
    cfg: ModelConfig,
    options: InferenceOptions = InferenceOptions(),
    *,
    text_cache: Optional[TextCache] = None,
    sam_masks: Optional[Sequence] = None,
    device: torch.device | str = "cpu",
) -> PipelineResult:
    """uint8 (3, H0, W0) RGB images → one ``Segmentation`` each (original sizes).

    ``options``: sizes, ensemble weights, thresholds, the seen classes (ensemble α vs β), the SAM
    ensemble. ``text_cache``: text classifiers kept across calls (default: encode the vocabulary now).
    ``sam_masks``: with ``options.sam_ensemble``, precomputed ``SamMasks`` per image (None entries, or
    no list, make them online through the ``sam_mask_decoder`` graph).
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
    # [SAM ensemble] per image: SAM masks (given, or prompted on the SAM embedding), CLIP-classified
    sam_in = [None] * len(images)
    if options.sam_ensemble:
        sam_in = [sam_semantic_inputs(i, images, inputs, sam, feats, text_in, runners, cfg, options, seen_t,
                                      sam_masks[i] if sam_masks else None) for i in range(len(images))]
    # postprocess each image at its original size
    is_thing = torch.tensor(vocabulary.is_thing)
    results = [
        postprocess(logprob[i], dec["pred_masks"][i], padded_size=tuple(inputs.clip_pixels.shape[-2:]),
                    image_size=inputs.image_sizes[i], output_size=tuple(images[i].shape[-2:]),
                    is_thing=is_thing, object_mask_threshold=options.object_mask_threshold,
                    overlap_threshold=options.overlap_threshold, topk=options.topk,
                    class_names=vocabulary.names, sam=sam_in[i][1] if sam_in[i] else None)
        for i in range(len(images))
    ]
    tensors = {"pred_logits": dec["pred_logits"], "pred_masks": dec["pred_masks"],
               "out_vocab_logits": out_vocab["out_vocab_logits"], "mask_cls_logprob": logprob, **sam}
    return PipelineResult(results, tensors, [s[0] for s in sam_in if s])


def sam_semantic_inputs(i: int, images, inputs: ModelInputs, sam: dict, feats: dict, text_in: dict,
                        runners: Mapping[str, Runner], cfg: ModelConfig, options: InferenceOptions,
                        seen: torch.Tensor, masks=None):
    """Image ``i``'s SAM masks (``masks``, or made as ``options.sam_masks`` says) and the merge inputs.

    Returns ``(SamMasks, SamSemanticInputs)``; the masks are classified by the ``mask_classifier``
    graph on this image's res5, exactly as the out-of-vocabulary branch classifies the queries.
    """
    from cmpf.sam_ensemble import SamSemanticInputs, classify_sam_masks, mask_classifier_runner
    from cmpf.sam_masks import SamFrame, generate_masks, generate_masks_from_embedding

    if not cfg.has_sam:
        raise InputError(f"--sam-ensemble needs a model with SAM; {cfg.name} has none")
    if masks is None and options.sam_masks.source == "image":
        masks = generate_masks(images[i], runners["sam_image_encoder"], runners["sam_mask_decoder"],
                               options.sam_masks, cfg.sam_input_size)
    elif masks is None:  # prompt the embedding the decoder used: where the image lies in the S × S warp
        frame = SamFrame.warped(tuple(images[i].shape[-2:]), inputs.image_sizes[i],
                                tuple(inputs.clip_pixels.shape[-2:]), cfg.sam_input_size)
        masks = generate_masks_from_embedding(runners["sam_mask_decoder"], sam["sam_embedding"][i:i + 1], frame,
                                              options.sam_masks)
    res5 = feats["res5"][i:i + 1]
    classify = mask_classifier_runner(runners["mask_classifier"], res5, text_in["text_embeddings"],
                                      text_in["synonym_mask"], cfg.num_queries)
    cls_logits = classify_sam_masks(masks.logits.to(res5.device), tuple(res5.shape[-2:]), classify, options.sam_merge)
    return masks, SamSemanticInputs(masks.logits, cls_logits, seen, options.sam_merge)


def preprocess(images: list[torch.Tensor], cfg: ModelConfig, options: InferenceOptions,
               device: torch.device | str = "cpu") -> ModelInputs:
    """The official resize (unless ``options.resize`` is False), then the CLIP and SAM copies."""
    resized = [resize_shortest_edge(im, options.min_size, options.max_size) if options.resize else im
               for im in images]
    return prepare_inputs(resized, divisibility=cfg.size_divisibility, sam_size=cfg.sam_input_size, device=device)
