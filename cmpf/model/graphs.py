"""Graph wrappers: flat named-tensor I/O around the model's own methods (no re-implemented logic).

Each wrapper's ``forward`` takes the inputs of its ``GraphSpec`` in order and returns the outputs in
order; the torch runner (``cmpf.runtime.torch_runner``) and the ONNX / AOTInductor exporters
(``cmpf.export``) use exactly these modules, so the runtime never needs the export package.
"""

from __future__ import annotations

import torch
from torch import nn

from cmpf.model.cmpf import CMPF
from cmpf.model.sam_mask_decoder import SamMaskDecoder
from cmpf.spec import GraphSpec, graph_specs
from cmpf.text import TextClassifier

FEATURES = ("res2", "res3", "res4", "res5")


class ClipImageEncoder(nn.Module):
    def __init__(self, model: CMPF):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        feats = self.model.encode_clip(pixel_values)
        return tuple(feats[f] for f in FEATURES)


class SamImageEncoder(nn.Module):
    def __init__(self, model: CMPF):
        super().__init__()
        self.model = model

    def forward(self, sam_pixel_values):
        return self.model.encode_sam(sam_pixel_values)


class TextEncoder(nn.Module):
    def __init__(self, model: CMPF):
        super().__init__()
        self.model = model

    def forward(self, token_ids):
        return self.model.backbone.encode_text(token_ids)


class Decoder(nn.Module):
    def __init__(self, model: CMPF):
        super().__init__()
        self.model = model

    def forward(self, res2, res3, res4, res5, *rest):
        *sam, text_embeddings, synonym_mask = rest
        feats = {"res2": res2, "res3": res3, "res4": res4, "res5": res5}
        final = self.model.decode(feats, sam[0] if sam else None, TextClassifier(text_embeddings, synonym_mask))[-1]
        return final.logits, final.masks


class MaskClassifier(nn.Module):
    def __init__(self, model: CMPF):
        super().__init__()
        self.model = model

    def forward(self, res5, pred_masks, text_embeddings, synonym_mask):
        return self.model.classify_masks(res5, pred_masks, TextClassifier(text_embeddings, synonym_mask))


class SamMaskDecoderGraph(nn.Module):
    def __init__(self, model: CMPF):
        super().__init__()
        self.decoder = SamMaskDecoder(model.sam)

    def forward(self, sam_embedding, point_coords, point_labels):
        return self.decoder(sam_embedding, point_coords, point_labels)


WRAPPERS = {
    "clip_image_encoder": ClipImageEncoder,
    "sam_image_encoder": SamImageEncoder,
    "text_encoder": TextEncoder,
    "decoder": Decoder,
    "mask_classifier": MaskClassifier,
    "sam_mask_decoder": SamMaskDecoderGraph,
}


def model_specs(model: CMPF) -> dict[str, GraphSpec]:
    return graph_specs(model.cfg, model.backbone.channels, model.backbone.embed_dim)


def graph_module(model: CMPF, name: str) -> nn.Module:
    """The eval-mode wrapper of graph ``name``."""
    if name not in model_specs(model):
        raise ValueError(f"model {model.cfg.name} has no graph {name!r}; graphs: {list(model_specs(model))}")
    return WRAPPERS[name](model).eval()


@torch.no_grad()
def call_graph(module: nn.Module, spec: GraphSpec, inputs) -> dict[str, torch.Tensor]:
    out = module(*(inputs[n] for n in spec.input_names))
    out = out if isinstance(out, tuple) else (out,)
    return dict(zip(spec.output_names, out))
