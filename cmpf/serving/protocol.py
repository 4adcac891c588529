"""The wire format of the ``cmpf_segment`` model: tensor names, dtypes, and the result record.

One home for what the server (``cmpf.serving.model``), the model repository
(``cmpf.serving.repository``) and the client (``cmpf.serving.client``) must agree on. Every tensor
carries Triton's batch dimension (one image per request; the dynamic batcher gathers requests).

Inputs (give ``image`` or ``pixels``):
    image       (1, N) uint8     an encoded image file (PNG, JPEG, ...), decoded as ``cmpf run`` reads files
    pixels      (1, H, W, 3) uint8  RGB pixels, used as they are
    vocabulary  (1, N) uint8     optional, UTF-8: ``cat;dog,puppy;sky`` (``--classes`` syntax) or the JSON of
                                 ``Vocabulary.to_json()``; default: the vocabulary recorded at export
    things      (1, N) uint8     optional, UTF-8: ``cat;dog`` (``--things``); with the class-list syntax only

Outputs:
    semantic    (1, H, W) int32  class index per pixel (vocabulary order)
    panoptic    (1, H, W) int32  segment id per pixel, 0 = void
    result      (1, N) uint8     UTF-8 JSON: ``vocabulary``, ``segments`` (id, category_id = class index,
                                 isthing, area) and ``instances`` (class, score, COCO RLE mask)

Strings travel as uint8 rather than Triton BYTES tensors: the server side of this model reads and
writes tensors through DLPack only (see ``cmpf.serving`` for why numpy is kept out of the stub).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from cmpf.codecs import encode_rles
from cmpf.errors import InputError
from cmpf.postprocess import Segmentation
from cmpf.vocabulary import Vocabulary, parse_class_list, parse_things

MODEL_NAME = "cmpf_segment"


@dataclass(frozen=True)
class WireTensor:
    name: str
    dims: tuple[int, ...]  # without the batch dimension; -1 = any size
    dtype: str  # Triton's name: UINT8, INT32
    optional: bool = False


INPUTS = (
    WireTensor("image", (-1,), "UINT8", optional=True),
    WireTensor("pixels", (-1, -1, 3), "UINT8", optional=True),
    WireTensor("vocabulary", (-1,), "UINT8", optional=True),
    WireTensor("things", (-1,), "UINT8", optional=True),
)
OUTPUTS = (
    WireTensor("semantic", (-1, -1), "INT32"),
    WireTensor("panoptic", (-1, -1), "INT32"),
    WireTensor("result", (-1,), "UINT8"),
)


def text_tensor(text: str) -> np.ndarray:
    """A string as the (1, N) uint8 tensor of its UTF-8 bytes."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)[None].copy()


def vocabulary_text(vocabulary: Vocabulary) -> str:
    """The wire form of a vocabulary that keeps every synonym and thing flag (its JSON)."""
    return json.dumps(vocabulary.to_json())


def parse_vocabulary(text: str, things: Optional[str] = None) -> Vocabulary:
    """A request's vocabulary: a class list (``--classes`` syntax, with ``things``) or a vocabulary's JSON."""
    if not text.strip():
        raise InputError("the request's vocabulary is empty; send class names such as 'cat;dog,puppy;sky' "
                         "(or leave the input out for the server's default vocabulary)")
    if text.lstrip().startswith("{"):
        if things:
            raise InputError("'things' goes with a class list; a vocabulary's JSON carries its own is_thing flags")
        try:
            return Vocabulary.from_json(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"the request's vocabulary is not a vocabulary's JSON ({type(e).__name__}: {e}); "
                             f"send {{\"classes\": [[...]], \"is_thing\": [...]}} or 'cat;dog,puppy'") from None
    return parse_class_list(text, parse_things(things))


def result_record(seg: Segmentation, vocabulary: Vocabulary) -> dict:
    """The JSON of one segmentation beside its label maps (``result`` above)."""
    masks = seg.instance_masks.cpu().numpy()
    instances = [{"class": int(c), "score": float(s), "rle": rle}
                 for c, s, rle in zip(seg.instance_classes.tolist(), seg.instance_scores.tolist(),
                                      encode_rles(masks))]
    segments = [{"id": int(s["id"]), "category_id": int(s["category_id"]), "isthing": bool(s["isthing"]),
                 "area": int(s["area"])} for s in seg.segments]
    return {"vocabulary": vocabulary.to_json(), "segments": segments, "instances": instances}


def segmentation_of(semantic: np.ndarray, panoptic: np.ndarray, record: dict) -> tuple[Segmentation, Vocabulary]:
    """A response's tensors → the ``Segmentation`` the server computed (for ``cmpf.outputs``) and its vocabulary.

    The server sends class labels, not the (K, H, W) scores; ``semantic`` here is their one-hot, so
    that ``semantic_labels`` (its argmax) is exactly the server's labels.
    """
    from pycocotools import mask as mask_utils

    vocabulary = Vocabulary.from_json(record["vocabulary"])
    labels = torch.from_numpy(np.array(semantic, dtype=np.int64))
    one_hot = torch.nn.functional.one_hot(labels, len(vocabulary)).permute(2, 0, 1).to(torch.uint8)
    h, w = labels.shape
    instances = record["instances"]
    rles = [{"size": i["rle"]["size"], "counts": i["rle"]["counts"].encode("ascii")} for i in instances]
    masks = mask_utils.decode(rles).transpose(2, 0, 1) if rles else np.zeros((0, h, w), np.uint8)
    seg = Segmentation(
        semantic=one_hot,
        panoptic=torch.from_numpy(np.array(panoptic, dtype=np.int32)),
        segments=[dict(s) for s in record["segments"]],
        instance_scores=torch.tensor([i["score"] for i in instances], dtype=torch.float32),
        instance_classes=torch.tensor([i["class"] for i in instances], dtype=torch.int64),
        instance_masks=torch.from_numpy(np.array(masks, dtype=bool)),
        class_names=vocabulary.names,
    )
    return seg, vocabulary
