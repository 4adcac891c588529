import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401
        has_trt = True
    except Exception:
        has_trt = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (not installable on this machine)"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model():
    from cmpf.model import build_model

    torch.manual_seed(0)
    return build_model("tiny")


@pytest.fixture(scope="session")
def tiny_vocab():
    from cmpf.vocabulary import parse_class_list

    return parse_class_list("cat;dog,puppy;sky,heaven;grass", things=["cat", "dog"])


@pytest.fixture(scope="session")
def tiny_text(tiny_model, tiny_vocab):
    return tiny_model.text_classifier_for(tiny_vocab)
