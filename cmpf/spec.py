"""Names, dimensions and dtypes of every exported graph: the one source for export and runtime.

Axis convention: NCHW, sizes as (H, W). A dim is an int (static) or a symbolic name; names shared
between tensors of one graph are the same size (``batch``, ``height``...). ``height``/``width`` are the
padded CLIP input size (multiples of 32); ``h4``..``w32`` are that size divided by 4..32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Union

import torch

from cmpf.config import ModelConfig

Dim = Union[int, str]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "bool": torch.bool}
GRAPH_NAMES = ("clip_image_encoder", "sam_image_encoder", "text_encoder", "decoder", "mask_classifier",
               "sam_mask_decoder")
SAM_MULTIMASK = 3  # SAM's multimask output: three masks per point prompt
CONTEXT_LENGTH = 77


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dims: tuple[Dim, ...]
    dtype: str = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(data: dict) -> "GraphSpec":
        conv = lambda ts: tuple(TensorSpec(t["name"], tuple(t["dims"]), t["dtype"]) for t in ts)  # noqa: E731
        return GraphSpec(data["name"], conv(data["inputs"]), conv(data["outputs"]))


def _features(channels: dict[str, int]) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(f"res{i}", ("batch", channels[f"res{i}"], f"h{2 ** i}", f"w{2 ** i}")) for i in (2, 3, 4, 5)
    )


def graph_specs(cfg: ModelConfig, channels: dict[str, int], embed_dim: int) -> dict[str, GraphSpec]:
    """Specs of the graphs of one model (FC-CLIP has no ``sam_image_encoder``)."""
    c, q, s = cfg.hidden_dim, cfg.num_queries, cfg.sam_input_size
    text = (TensorSpec("text_embeddings", ("num_classes", "num_synonyms", embed_dim)),
            TensorSpec("synonym_mask", ("num_classes", "num_synonyms"), "bool"))
    logits = ("batch", q, "num_classes_plus_void")
    sam_in = (TensorSpec("sam_embedding", ("batch", c, s // 16, s // 16)),) if cfg.has_sam else ()
    specs = {
        "clip_image_encoder": GraphSpec(
            "clip_image_encoder", (TensorSpec("pixel_values", ("batch", 3, "height", "width")),), _features(channels)
        ),
        "text_encoder": GraphSpec(
            "text_encoder", (TensorSpec("token_ids", ("num_prompts", CONTEXT_LENGTH), "int64"),),
            (TensorSpec("text_features", ("num_prompts", embed_dim)),),
        ),
        "decoder": GraphSpec(
            "decoder", _features(channels) + sam_in + text,
            (TensorSpec("pred_logits", logits), TensorSpec("pred_masks", ("batch", q, "h4", "w4"))),
        ),
        "mask_classifier": GraphSpec(
            "mask_classifier",
            (TensorSpec("res5", ("batch", channels["res5"], "h32", "w32")),
             TensorSpec("pred_masks", ("batch", q, "h4", "w4"))) + text,
            (TensorSpec("out_vocab_logits", logits),),
        ),
    }
    if cfg.has_sam:
        specs["sam_image_encoder"] = GraphSpec(
            "sam_image_encoder", (TensorSpec("sam_pixel_values", ("batch", 3, s, s)),), sam_in
        )
        # SAM's prompt encoder + mask decoder on one image embedding (g = S / 16 cells a side), a batch
        # of single-point prompts in the S × S input frame (labels: 1 foreground, 0 background, -1
        # ignored); multimask low-resolution logits (4g)² and their predicted IoU (the SAM ensemble)
        g = s // cfg.sam.patch_size
        low = 4 * g
        specs["sam_mask_decoder"] = GraphSpec(
            "sam_mask_decoder",
            (TensorSpec("sam_embedding", (1, c, g, g)), TensorSpec("point_coords", ("num_points", 1, 2)),
             TensorSpec("point_labels", ("num_points", 1))),
            (TensorSpec("mask_logits", ("num_points", SAM_MULTIMASK, low, low)),
             TensorSpec("iou_predictions", ("num_points", SAM_MULTIMASK))),
        )
    return {name: specs[name] for name in GRAPH_NAMES if name in specs}


def check_inputs(spec: GraphSpec, inputs) -> None:
    """Validate names, dtypes, ranks and static dims; raise ``ValueError`` naming the problem."""
    missing = [t.name for t in spec.inputs if t.name not in inputs]
    if missing:
        raise ValueError(f"{spec.name}: missing inputs {missing}; expected {spec.input_names}")
    extra = sorted(set(inputs) - set(spec.input_names))
    if extra:
        raise ValueError(f"{spec.name}: unexpected inputs {extra}; expected {spec.input_names}")
    for t in spec.inputs:
        x = inputs[t.name]
        if x.dtype != t.torch_dtype:
            raise ValueError(f"{spec.name}.{t.name}: dtype {x.dtype}, expected {t.torch_dtype}")
        if x.dim() != len(t.dims):
            raise ValueError(f"{spec.name}.{t.name}: rank {x.dim()} {tuple(x.shape)}, expected {t.dims}")
        for i, d in enumerate(t.dims):
            if isinstance(d, int) and x.shape[i] != d:
                raise ValueError(f"{spec.name}.{t.name}: dim {i} is {x.shape[i]}, expected {d} (spec {t.dims})")
