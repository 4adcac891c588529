"""Fusioner export wrappers: flat named-tensor I/O around the model's own methods, and their specs.

Three graphs (a runtime chains them; the sliding window and the prediction rule stay outside):
- ``fusioner_visual_encoder``: one normalised window per batch item → unit patch tokens;
- ``fusioner_text_encoder``: the 32 template prompts of one class name → its unit class embedding;
- ``fusioner_fusion_decoder``: patch tokens + K class embeddings → mask logits of the window.
Each wrapper's ``forward`` takes its ``GraphSpec`` inputs in order and returns its outputs in order.
Per-class inference calls the fusion graph with ``num_classes = 1``, once per class.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from cmpf.fusioner.config import FusionerConfig
from cmpf.fusioner.model import Fusioner
from cmpf.fusioner.prompts import CONTEXT_LENGTH, TEMPLATES, tokenize_class
from cmpf.spec import GraphSpec, TensorSpec, check_inputs

VISUAL_ENCODER = "fusioner_visual_encoder"
TEXT_ENCODER = "fusioner_text_encoder"
FUSION_DECODER = "fusioner_fusion_decoder"
GRAPH_NAMES = (VISUAL_ENCODER, TEXT_ENCODER, FUSION_DECODER)


class VisualEncoder(nn.Module):
    def __init__(self, model: Fusioner):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.encode_image(pixel_values)


class TextEncoder(nn.Module):
    def __init__(self, model: Fusioner):
        super().__init__()
        self.model = model

    def forward(self, template_token_ids):
        return self.model.encode_class(template_token_ids)


class FusionDecoder(nn.Module):
    def __init__(self, model: Fusioner):
        super().__init__()
        self.model = model

    def forward(self, image_tokens, text_embeddings):
        return self.model.segment_window(image_tokens, text_embeddings)


WRAPPERS = {VISUAL_ENCODER: VisualEncoder, TEXT_ENCODER: TextEncoder, FUSION_DECODER: FusionDecoder}


def graph_specs(cfg: FusionerConfig) -> dict[str, GraphSpec]:
    """Names, dims and dtypes of the three graphs (``batch`` and ``num_classes`` are dynamic)."""
    s, n, d = cfg.window_size, cfg.num_patches, cfg.clip_embed_dim
    tokens = TensorSpec("image_tokens", ("batch", n, d))
    return {
        VISUAL_ENCODER: GraphSpec(VISUAL_ENCODER, (TensorSpec("pixel_values", ("batch", 3, s, s)),), (tokens,)),
        TEXT_ENCODER: GraphSpec(
            TEXT_ENCODER, (TensorSpec("template_token_ids", (len(TEMPLATES), CONTEXT_LENGTH), "int64"),),
            (TensorSpec("class_embedding", (1, d)),),
        ),
        FUSION_DECODER: GraphSpec(
            FUSION_DECODER, (tokens, TensorSpec("text_embeddings", ("num_classes", d))),
            (TensorSpec("mask_logits", ("batch", "num_classes", s, s)),),
        ),
    }


def graph_module(model: Fusioner, graph: str) -> nn.Module:
    """The eval-mode wrapper of one graph of ``model``."""
    if graph not in WRAPPERS:
        raise ValueError(f"Fusioner has no graph {graph!r}; graphs: {', '.join(GRAPH_NAMES)}")
    return WRAPPERS[graph](model).eval()


def call_graph(module: nn.Module, spec: GraphSpec, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Named inputs → named outputs of one wrapper (no autograd)."""
    with torch.no_grad():
        out = module(*(inputs[n] for n in spec.input_names))
    return dict(zip(spec.output_names, out if isinstance(out, tuple) else (out,)))


def example_inputs(spec: GraphSpec, *, batch: int = 2, num_classes: int = 3, seed: int = 0,
                   class_name: str = "cat") -> dict[str, torch.Tensor]:
    """Valid inputs of one graph: normal pixels, unit-norm tokens and embeddings, the prompts of ``class_name``.

    Export traces with ``batch`` and ``num_classes`` >= 2 (a size-1 trace fixes the dim); tests use others.
    """
    g = torch.Generator().manual_seed(seed)
    sizes = {"batch": batch, "num_classes": num_classes}
    out = {}
    for t in spec.inputs:
        if t.name == "template_token_ids":
            out[t.name] = tokenize_class(class_name)
            continue
        x = torch.randn(tuple(sizes.get(d, d) for d in t.dims), generator=g)
        out[t.name] = x / x.norm(dim=-1, keepdim=True) if t.name in ("image_tokens", "text_embeddings") else x
    return out


class FusionerTorchRunner:
    """The eager graph behind the ``cmpf.runtime.base.Runner`` protocol (the ``torch`` backend)."""

    backend = "torch"

    def __init__(self, model: Fusioner, graph: str):
        self.module = graph_module(model, graph)
        self.graph = graph_specs(model.cfg)[graph]

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_inputs(self.graph, inputs)
        return call_graph(self.module, self.graph, inputs)

    def close(self) -> None:
        self.module = None
