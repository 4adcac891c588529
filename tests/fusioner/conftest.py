import pytest
import torch


@pytest.fixture(scope="session")
def tiny_fusioner():
    from cmpf.fusioner import build_model

    torch.manual_seed(0)
    return build_model("tiny-fusioner")


@pytest.fixture(scope="session")
def tiny_image():
    """A 300×400 RGB uint8 image with structure (two halves, noise): 2×3 windows."""
    import numpy as np

    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, size=(300, 400, 3), dtype=np.uint8)
    img[:, 200:] += np.array([180, 120, 30], dtype=np.uint8)
    return img
