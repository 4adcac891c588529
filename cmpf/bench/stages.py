"""Per-stage latency of the pipeline for one set of runners: preprocess, each graph, ensemble,
postprocess, end to end.

Graphs are timed through their ``Runner`` call on the inputs a real image batch produces, so every
backend is measured the same way: by default with inputs already on the device (host transfer
excluded); with ``TimingMode.host_transfer`` the inputs come from host memory and the outputs go
back to it (a no-op on CPU); with ``TimingMode.cuda_graph`` a runner that allows it is captured once
per shape and replayed (``cmpf.bench.cuda_graphs``). Preprocessing (shared by all backends), the
ensemble and postprocessing are timed on the intermediates of one real run; ``segment`` is the
whole call end to end (text classifier cached, as in ``cmpf run``; the uint8 images' host→device
copy and the results' way back always included).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from cmpf.bench.cuda_graphs import capture
from cmpf.bench.parity import record_pipeline
from cmpf.bench.timing import Timing, TimingMode, time_call
from cmpf.config import InferenceOptions, ModelConfig
from cmpf.ensemble import geometric_ensemble, valid_mask_weights
from cmpf.pipeline import sam_semantic_inputs, preprocess, segment
from cmpf.postprocess import postprocess
from cmpf.runtime.base import Runner
from cmpf.text import TextCache
from cmpf.vocabulary import Vocabulary

END_TO_END = "segment"


@dataclass(frozen=True)
class StageTiming:
    stage: str  # "preprocess", a graph name, "ensemble", "postprocess" or "segment" (end to end)
    backend: str
    timing: Timing
    batch: int = 1
    shape: Optional[tuple[int, int]] = None  # (H, W) of the input images
    timer: str = "wall"  # or "cuda-events"
    host_transfer: bool = False  # host→device inputs and device→host outputs inside the timed call
    cuda_graph: bool = False  # replays of a captured CUDA graph
    note: Optional[str] = None  # e.g. why a runner was not captured

    def to_json(self) -> dict:
        return {"stage": self.stage, "backend": self.backend, "batch": self.batch,
                "shape": None if self.shape is None else list(self.shape), **self.timing.to_json(),
                "timer": self.timer, "host_transfer": self.host_transfer, "cuda_graph": self.cuda_graph,
                "note": self.note}


def time_graphs(runners: Mapping[str, Runner], inputs: Mapping[str, Mapping[str, torch.Tensor]], *,
                warmup: int = 2, iters: int = 10, mode: TimingMode = TimingMode()) -> list[StageTiming]:
    """Latency of each runner on its captured inputs."""
    rows = []
    for g, feed in inputs.items():
        call, captured, note = graph_call(runners[g], feed, mode)
        rows.append(StageTiming(g, runners[g].backend, time_call(call, warmup=warmup, iters=iters,
                                                                 cuda_events=mode.cuda_events),
                                timer=mode.timer, host_transfer=mode.host_transfer, cuda_graph=captured, note=note))
    return rows


def graph_call(runner: Runner, feed: Mapping[str, torch.Tensor], mode: TimingMode):
    """(the call to time, whether it replays a CUDA graph, a note) for one runner on its inputs ``feed``."""
    device = next(iter(feed.values())).device
    host = None
    if mode.host_transfer:  # the inputs start in host memory (pinned, as a serving loop would keep them)
        host = {k: (v.cpu().pin_memory() if device.type == "cuda" else v.cpu()) for k, v in feed.items()}
    note = None
    if mode.cuda_graph:
        with torch.inference_mode():
            replay, note = capture(runner, feed, device)
        if replay is not None:
            return ((lambda: _to_host(replay(host))) if host is not None else replay), True, None
        note = f"not captured: {note}"
    if host is not None:
        return (lambda: _to_host(runner(host))), False, note
    return (lambda: runner(feed)), False, note


def _to_host(outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in outputs.items()}  # .cpu() of a host tensor is the tensor itself


def benchmark_pipeline(runners: Mapping[str, Runner], cfg: ModelConfig, image: torch.Tensor, vocabulary: Vocabulary,
                       *, warmup: int = 2, iters: int = 10, options: InferenceOptions = InferenceOptions(),
                       device: str | torch.device = "cpu", batch: int = 1,
                       mode: TimingMode = TimingMode()) -> list[StageTiming]:
    """Stage latencies of ``segment`` on a batch of ``batch`` copies of one uint8 (3, H, W) image."""
    backend = next(iter(runners.values())).backend
    images = [image] * batch
    shape = tuple(image.shape[-2:])
    timed = lambda fn: time_call(fn, warmup=warmup, iters=iters, cuda_events=mode.cuda_events)  # noqa: E731
    rows = [StageTiming("preprocess", "torch", timed(lambda: preprocess(images, cfg, options, device)))]
    result, inputs = record_pipeline(runners, images, vocabulary, cfg, options, device)
    graphs = time_graphs(runners, inputs, warmup=warmup, iters=iters, mode=mode)
    ensemble, post = _ensemble_and_postprocess(result.tensors, inputs, images, vocabulary, cfg, options, device)
    rows += [StageTiming("ensemble", "torch", timed(ensemble)), StageTiming("postprocess", "torch", timed(post))]
    if options.sam_ensemble:  # the SAM masks of one image: point-grid prompts, filters, CLIP classification
        sam = _sam_masks_stage(result.tensors, inputs, images, runners, cfg, options, device)
        rows.append(StageTiming("sam_masks", backend, timed(sam)))
    text = TextCache(runners["text_encoder"], options.text_batch)
    run = lambda: segment(images, vocabulary, runners, cfg, options, text_cache=text, device=device)  # noqa: E731
    rows.append(StageTiming(END_TO_END, backend, timed(run), host_transfer=True))
    rows = [dataclasses.replace(r, timer=mode.timer) for r in rows]
    return [dataclasses.replace(r, batch=batch, shape=shape) for r in rows[:1] + graphs + rows[1:]]


def _sam_masks_stage(tensors, inputs, images, runners, cfg: ModelConfig, options: InferenceOptions, device):
    """``cmpf.pipeline.sam_semantic_inputs`` of the first image, on one run's intermediates."""
    classifier_in = inputs["mask_classifier"]
    feats = {"res5": classifier_in["res5"]}
    text_in = {k: classifier_in[k] for k in ("text_embeddings", "synonym_mask")}
    prepared = preprocess(images, cfg, options, device)
    seen = torch.zeros(text_in["text_embeddings"].shape[0])
    sam = {"sam_embedding": tensors["sam_embedding"]}
    return lambda: sam_semantic_inputs(0, images, prepared, sam, feats, text_in, runners, cfg, options, seen)


def _ensemble_and_postprocess(tensors, inputs, images, vocabulary: Vocabulary, cfg: ModelConfig,
                              options: InferenceOptions, device):
    """The pipeline's ensemble and postprocess steps as calls on one run's intermediates."""
    logits, masks, out_vocab = tensors["pred_logits"], tensors["pred_masks"], tensors["out_vocab_logits"]
    res5_size = inputs["mask_classifier"]["res5"].shape[-2:]
    seen = torch.tensor(options.seen_mask(vocabulary.classes), dtype=torch.float32, device=logits.device)
    padded = tuple(inputs["clip_image_encoder"]["pixel_values"].shape[-2:])
    sizes = preprocess(images, cfg, options, device).image_sizes
    is_thing = torch.tensor(vocabulary.is_thing)

    def ensemble():
        alpha, beta = options.ensemble_alpha, options.ensemble_beta
        if options.ensemble_on_valid_mask:
            alpha, beta = valid_mask_weights(masks, res5_size, alpha, beta)
        return geometric_ensemble(logits, out_vocab, seen, alpha, beta)

    logprob = tensors["mask_cls_logprob"]

    def post():
        return [postprocess(logprob[i], masks[i], padded_size=padded, image_size=sizes[i],
                            output_size=tuple(images[i].shape[-2:]), is_thing=is_thing,
                            object_mask_threshold=options.object_mask_threshold,
                            overlap_threshold=options.overlap_threshold, topk=options.topk,
                            class_names=vocabulary.names) for i in range(len(images))]

    return ensemble, post
