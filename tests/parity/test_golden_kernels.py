"""The golden parity checks with the three Triton kernels selected (under TRITON_INTERPRET=1 on CPU,
natively on a GPU). Slow under the interpreter (13 min on 2 CPU cores): opt in with ``-m slow``."""

import pytest

import golden
from test_golden import (  # noqa: F401  (the same checks, run on this module's fixture)
    golden_run,
    test_decoder_and_ensemble_tensors,
    test_instances_as_a_set,
    test_panoptic,
    test_semantic,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not golden.available(), reason="../shared/reference/golden is not present"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("triton", reason="Triton is not installed")
    return golden_run(tmp_path_factory.mktemp("golden_kernels"), attention_impl="triton",
                      mask_pooling_impl="triton", deform_attn_impl="triton")
