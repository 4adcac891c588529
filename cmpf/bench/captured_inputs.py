"""A graph's captured inputs in Polygraphy's JSON input format, so a miss reproduces without cmpf.

``polygraphy run <graph>.onnx --onnxrt --load-inputs FILE`` reads a JSON list of feed dicts
(``[{input name: array}]``, one per iteration). Polygraphy encodes every NumPy array as
``{"array": base64(np.save(array)), "polygraphy_class": "ndarray"}`` (``polygraphy.json.serde``);
this module writes (and reads back) that encoding itself, so polygraphy need not be installed.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from cmpf.io import write_text

TYPE_MARKER = "polygraphy_class"  # polygraphy.constants.TYPE_MARKER


def encode_array(array: np.ndarray) -> dict:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return {"array": base64.b64encode(buf.getvalue()).decode(), TYPE_MARKER: "ndarray"}


def decode_array(obj: Mapping) -> np.ndarray:
    if obj.get(TYPE_MARKER) != "ndarray":
        raise ValueError(f"not a Polygraphy-encoded array (no {TYPE_MARKER}: ndarray)")
    return np.load(io.BytesIO(base64.b64decode(obj["array"], validate=True)), allow_pickle=False)


def write_polygraphy_inputs(path: str | Path, feeds: Sequence[Mapping[str, torch.Tensor | np.ndarray]]) -> Path:
    """Write ``feeds`` (one {input name: tensor} per iteration) for ``polygraphy run --load-inputs``."""
    data = [{name: encode_array(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t))
             for name, t in feed.items()} for feed in feeds]
    return write_text(path, json.dumps(data, indent=1) + "\n")


def read_polygraphy_inputs(path: str | Path) -> list[dict[str, np.ndarray]]:
    """The feeds of a ``--load-inputs`` file."""
    data = json.loads(Path(path).read_text())
    return [{name: decode_array(obj) for name, obj in feed.items()} for feed in data]
