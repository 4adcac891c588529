"""The ``cmpf_segment`` model inside Triton's Python backend: requests → ``Predictor.segment`` → responses.

Loaded by the backend's stub process (``triton_python_backend_utils`` exists only there); the
model directory's ``model.py`` re-exports ``TritonPythonModel`` from here. ``initialize`` loads the
predictor named by the model config's parameters (artifacts, backend, device, resize, limits; or,
in a repository of ``cmpf triton-repo``, BLS runners over its graph models); ``execute``
gets the requests the dynamic batcher gathered, decodes each one on its own (a bad request gets its
own 400-style error and the others go on), segments the good ones with one pipeline call per
vocabulary and image size, and answers each. The predictor's text cache keeps one text classifier
per vocabulary for the life of the instance. Tensors cross the stub through DLPack only
(``cmpf.serving``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import torch

from cmpf.backend import Backend
from cmpf.errors import CmpfError, InputError
from cmpf.manifest import Manifest
from cmpf.predictor import ModelSource, Predictor, load_predictor, options_with
from cmpf.preprocess import check_image_size, load_image
from cmpf.serving.protocol import parse_vocabulary, result_record
from cmpf.vocabulary import Vocabulary


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_pixels = int(params["max_pixels"])
        self.max_image_bytes = int(params["max_image_bytes"])
        artifacts = Path(args["model_repository"]) / params["artifacts"]  # a relative path: in the model's directory
        device = params.get("device", "cpu")
        if params.get("runners", "local") == "bls":  # a repository's graph models (cmpf.serving.triton_repo)
            from cmpf.serving.bls import bls_runners

            manifest = Manifest.read(artifacts)
            self.predictor = Predictor(bls_runners(manifest), manifest.model, Backend.parse(params["backend"]),
                                       options=manifest.inference, vocabulary=manifest.vocabulary, device=device)
        else:
            source = ModelSource(artifacts=str(artifacts), precision=params.get("precision") or None)
            self.predictor = load_predictor(source, params["backend"], device)
        resize = {"": None, "true": True, "false": False}[params.get("resize", "")]
        self.options = options_with(self.predictor.options, resize=resize)

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses: list = [None] * len(requests)
        groups: dict[str, list[tuple[int, torch.Tensor]]] = {}  # see the key below
        vocabularies: dict[str, Vocabulary] = {}
        for i, request in enumerate(requests):
            try:
                image, vocabulary = self._decode(request, pb_utils)
            except CmpfError as e:
                responses[i] = _error(pb_utils, e)
                continue
            # one call per vocabulary and image size: equal sizes pad alike, so a batched image gets what
            # it gets alone (what `cmpf run` gives it)
            key = json.dumps([vocabulary.to_json(), list(image.shape)])
            vocabularies[key] = vocabulary
            groups.setdefault(key, []).append((i, image))
        for key, members in groups.items():
            for i, response in self._segment(members, vocabularies[key], pb_utils):
                responses[i] = response
        return responses

    def finalize(self) -> None:
        self.predictor.close()

    def _segment(self, members: list[tuple[int, torch.Tensor]], vocabulary: Vocabulary, pb_utils):
        """One pipeline call for the requests of one vocabulary; alone each, when that call fails."""
        try:
            result = self.predictor.segment([image for _, image in members], vocabulary, self.options)
        except Exception as e:  # noqa: BLE001 (the server must go on; each request then gets its own answer)
            if len(members) > 1:
                return [pair for member in members for pair in self._segment([member], vocabulary, pb_utils)]
            return [(members[0][0], _error(pb_utils, e))]
        return [(i, _response(pb_utils, seg, vocabulary)) for (i, _), seg in zip(members, result.segmentations)]

    def _decode(self, request, pb_utils) -> tuple[torch.Tensor, Vocabulary]:
        """One request → uint8 (3, H, W) image and its vocabulary; ``InputError`` naming what is wrong."""
        encoded, pixels = _input(pb_utils, request, "image"), _input(pb_utils, request, "pixels")
        if (encoded is None) == (pixels is None):
            raise InputError("send exactly one of the inputs 'image' (an encoded file) and 'pixels' "
                                  "(uint8 H x W x 3)")
        if encoded is not None:
            image = self._decode_file(encoded)
        else:
            if pixels.dim() != 4 or pixels.shape[0] != 1 or pixels.shape[-1] != 3:
                raise InputError(f"'pixels' has shape {tuple(pixels.shape)}; send (1, H, W, 3) uint8 RGB")
            check_image_size(pixels.shape[1], pixels.shape[2], "'pixels'", self.max_pixels)
            image = pixels[0].permute(2, 0, 1).contiguous()
        text, things = _text(pb_utils, request, "vocabulary"), _text(pb_utils, request, "things")
        vocabulary = self.predictor.resolve_vocabulary(None if text is None else parse_vocabulary(text, things))
        return image, vocabulary

    def _decode_file(self, encoded: torch.Tensor) -> torch.Tensor:
        if encoded.numel() > self.max_image_bytes:
            raise InputError(f"the image is {encoded.numel():,} bytes, above this server's limit of "
                                  f"{self.max_image_bytes:,}; send a smaller file (or start the server with a "
                                  f"larger --max-image-bytes)")
        # cmpf.preprocess.load_image is THE decoder (EXIF, modes, size checks); it reads files
        with tempfile.TemporaryDirectory(prefix="cmpf-serve-") as tmp:
            path = Path(tmp) / "image"
            path.write_bytes(encoded.numpy().tobytes())
            image = load_image(path, max_pixels=self.max_pixels)
        return image


def _input(pb_utils, request, name: str) -> Optional[torch.Tensor]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else torch.from_dlpack(tensor.to_dlpack())


def _text(pb_utils, request, name: str) -> Optional[str]:
    tensor = _input(pb_utils, request, name)
    if tensor is None:
        return None
    try:
        return tensor.reshape(-1).numpy().tobytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"the input '{name}' is not UTF-8 text; send the UTF-8 bytes of a string") from None


def _out(pb_utils, name: str, tensor: torch.Tensor):
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(tensor.contiguous()))


def _response(pb_utils, seg, vocabulary: Vocabulary):
    record = json.dumps(result_record(seg, vocabulary)).encode("utf-8")
    return pb_utils.InferenceResponse([
        _out(pb_utils, "semantic", seg.semantic_labels.to(torch.int32)[None].cpu()),
        _out(pb_utils, "panoptic", seg.panoptic.to(torch.int32)[None].cpu()),
        _out(pb_utils, "result", torch.frombuffer(bytearray(record), dtype=torch.uint8)[None]),
    ])


def _error(pb_utils, e: Exception):
    """A request's error: INVALID_ARG (HTTP 400) for a bad input, INTERNAL (500) for anything else."""
    message = " ".join(str(e).split()) or type(e).__name__
    bad_input = isinstance(e, (CmpfError, ValueError))
    code = pb_utils.TritonError.INVALID_ARG if bad_input else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
