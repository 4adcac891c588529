"""Soak: 1000 tiny segmentations through one predictor; the resident memory grows by less than 5%."""

from __future__ import annotations

import gc

import pytest
import torch
from conftest import CLASSES

from cmpf.predictor import ModelSource, load_predictor, options_with
from cmpf.vocabulary import parse_class_list

WARMUP = 50  # allocator pools and caches settle first
ITERATIONS = 1000
MAX_GROWTH = 0.05


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def soak(iterations: int) -> tuple[int, int]:
    """RSS after the warm-up and after ``iterations`` more segmentations (new image sizes and vocabularies)."""
    torch.manual_seed(0)
    predictor = load_predictor(ModelSource(model="tiny"))
    options = options_with(predictor.options, resize=False)
    vocabularies = [parse_class_list(CLASSES), parse_class_list("road;car;tree,bush")]
    g = torch.Generator().manual_seed(0)

    def step(i: int) -> None:
        image = torch.randint(0, 256, (3, 16 + 8 * (i % 3), 24), dtype=torch.uint8, generator=g)
        predictor.segment([image], vocabularies[i % 2], options)

    for i in range(WARMUP):
        step(i)
    gc.collect()
    start = rss_bytes()
    for i in range(iterations):
        step(i)
    gc.collect()
    return start, rss_bytes()


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="reads RSS from /proc")
@pytest.mark.slow
def test_soak_1000_segmentations_memory_flat():
    start, end = soak(ITERATIONS)
    assert end < start * (1 + MAX_GROWTH), f"RSS {start / 2**20:.0f} MiB -> {end / 2**20:.0f} MiB"
