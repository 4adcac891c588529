"""Package attributes imported on first use (PEP 562): ``__getattr__, __dir__ = lazy_attributes(...)``.

A package whose parts import torch (``cmpf.data``, ``cmpf.fusioner``) names them this way, so that
reading one light module of it (a dataset registry, a preset table) imports nothing heavy.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping


def lazy_attributes(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``homes`` maps each public name to its module."""

    def __getattr__(name: str):
        if name in homes:
            return getattr(importlib.import_module(homes[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(homes))

    return __getattr__, __dir__
