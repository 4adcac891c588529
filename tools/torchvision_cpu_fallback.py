"""Environment hook: let a CUDA-linked torchvision wheel import next to the CPU torch.

Installed into the virtual environment by ``make setup`` (with a one-line ``.pth`` file). The
PyPI torchvision 0.28 wheel links its ``_C`` extension against CUDA; next to the CPU torch that
extension cannot load, torchvision's meta registrations then fail with ``operator torchvision::nms
does not exist`` and every package that imports torchvision (open_clip, segment-anything) breaks.

This hook waits until something imports ``torchvision``; only then (torch is not imported at
interpreter start) it tries to load the real extension and, only when that fails, defines the two
operator schemas torchvision registers fake kernels for, with a pure-torch NMS behind ``nms``, and
once torchvision has imported, tells ``torchvision.extension`` that its ops exist so that
``torchvision.ops.nms`` (used by segment-anything's mask generator) reaches that NMS. Other
torchvision C++ ops stay unavailable. It never touches the model code and does nothing when
torchvision's extension loads.
"""

import importlib.abc
import importlib.machinery
import os
import sys


def _nms(dets, scores, iou_threshold):
    import torch

    order = scores.argsort(descending=True)
    keep = []
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool)
    x1, y1, x2, y2 = dets.unbind(-1)
    areas = (x2 - x1) * (y2 - y1)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        suppressed |= inter / (areas[i] + areas - inter) > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def _install_fallback(package_dir) -> bool:
    """Define the fallback ops unless the real extension loads; returns whether it did."""
    import torch

    for name in os.listdir(package_dir):
        if name.startswith("_C") and name.endswith(".so"):
            try:
                torch.ops.load_library(os.path.join(package_dir, name))
                return False  # the real extension works: nothing to do
            except OSError:
                break
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms, "CPU")
    _install_fallback.lib = lib  # keep the registration alive
    return True


class _AfterImport(importlib.abc.Loader):
    """Runs torchvision's own loader, then marks its (fallback) ops as present."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        import torchvision.extension

        torchvision.extension._has_ops = lambda: True  # torchvision.ops.nms checks this first


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.submodule_search_locations:
            if _install_fallback(list(spec.submodule_search_locations)[0]):
                spec.loader = _AfterImport(spec.loader)
        return spec


def install():
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
