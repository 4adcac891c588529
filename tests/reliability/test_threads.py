"""8 threads sharing one ``Predictor`` give the results of a serial run, bit for bit, on every CPU backend."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import CLASSES

from cmpf.predictor import ModelSource, load_predictor, options_with
from cmpf.vocabulary import parse_class_list

THREADS = 8


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, 24 + 8 * i, 40), dtype=torch.uint8, generator=g) for i in range(THREADS)]


def _fingerprint(result) -> list[torch.Tensor]:
    seg = result.segmentations[0]
    return [seg.semantic, seg.panoptic, seg.instance_masks, seg.instance_scores,
            *(result.tensors[k] for k in sorted(result.tensors))]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_threads_sharing_one_predictor_match_a_serial_run(backend, request):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
        source = ModelSource(artifacts=str(request.getfixturevalue("artifacts")))
    else:
        torch.manual_seed(0)
        source = ModelSource(model="tiny")
    predictor = load_predictor(source, backend)
    vocabulary = parse_class_list(CLASSES, things=["cat", "dog"])
    options = options_with(predictor.options, resize=False)
    images = _images()

    def one(image):
        return _fingerprint(predictor.segment([image], vocabulary, options))

    serial = [one(im) for im in images]
    with ThreadPoolExecutor(THREADS) as pool:
        for _ in range(2):  # twice: the text cache is warm the second time
            threaded = list(pool.map(one, images))
            for want, got in zip(serial, threaded):
                assert len(want) == len(got)
                for w, g in zip(want, got):
                    assert torch.equal(w, g)
    predictor.close()
