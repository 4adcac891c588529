"""The golden comparisons of ``test_golden.py``, with every graph of the full model on ONNX Runtime.

Exports ``frozenseg-convnext-large`` with the golden checkpoint (keys_variantB.tsv rule) to ONNX,
runs ``cmpf.pipeline.segment`` with ONNX Runtime runners on the golden 300×400 input (CLIP input
320×416) and applies the same checks as the eager golden test. Opt-in (``-m slow``): 6.6 min on 2
CPU cores, nearly all of it the export of the five full-size graphs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import golden
import test_golden
from cmpf.tolerances import REL, rel_error

pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not golden.available(), reason="../shared/reference/golden is not present")]

F32 = REL[("golden", "fp32")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from cmpf.export.api import ExportConfig, export_model
    import exported

    root = tmp_path_factory.mktemp("golden_onnx")
    ckpt = root / "frozenseg_variantB.pth"
    torch.save({"model": golden.golden_state_dict()}, ckpt)
    export_model(ExportConfig("frozenseg-convnext-large", str(root / "artifacts"), checkpoint=str(ckpt)),
                 progress=False)
    predictor = exported.predictor(root / "artifacts", "onnxruntime")
    # the same inputs as test_golden
    return (predictor.runners, *test_golden.golden_segment(predictor.runners, predictor.cfg))


def test_text_encoder_on_first_prompts(run):
    from cmpf.text import synonym_embeddings, tokenize

    runners, vocab, _, arrays, _, _ = run
    tokens = tokenize(vocab.prompts()[:28])
    np.testing.assert_array_equal(tokens.numpy(), arrays["tokens_first_28_prompts"])
    synonyms = synonym_embeddings(runners["text_encoder"]({"token_ids": tokens})["text_features"])
    assert rel_error(synonyms.numpy(), arrays["text_classifier"][:2]) < F32


def test_decoder_and_ensemble_tensors(run):
    test_golden.test_decoder_and_ensemble_tensors(run)


def test_semantic(run):
    test_golden.test_semantic(run)


def test_panoptic(run):
    test_golden.test_panoptic(run)


def test_instances_as_a_set(run):
    test_golden.test_instances_as_a_set(run)
