"""Optimisation-profile ranges: ``cmpf.spec``'s symbolic dims + ``--shapes`` → min/opt/max shapes.

Consumes a ``GraphSpec`` (whose dims mix ints and names such as ``batch``, ``height``, ``h32``,
``num_classes``) and ranges for the free names; produces, per graph input, the (min, opt, max) shapes
one TensorRT optimisation profile declares. ``height``/``width`` are the padded CLIP input size, a
multiple of 32; ``h4``..``w32`` are derived from them (height / stride), never given directly, so that
every feature map of one graph stays consistent. Nothing here imports TensorRT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from cmpf.errors import InputError
from cmpf.spec import GraphSpec

SIZE_DIVISIBILITY = 32  # the padded CLIP input is a multiple of CLIP's coarsest stride
_STRIDED = re.compile(r"([hw])(\d+)")  # h4 .. w32: height / width divided by the stride


@dataclass(frozen=True)
class DimRange:
    """The values one symbolic dim takes in one profile (TensorRT tunes kernels for ``opt``)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputError(f"range {self.min}:{self.opt}:{self.max} must satisfy 1 <= MIN <= OPT <= MAX")

    def __contains__(self, value: int) -> bool:
        return self.min <= value <= self.max

    def text(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


# The ranges a profile has unless --shapes says otherwise: images up to the official 800 / 1333 test
# size (padded to 1344), a batch of up to 4, vocabularies up to 1000 classes (A-847, PC-459 fit), the
# text encoder's 128-prompt chunks (cmpf.text) and the SAM ensemble's 64-point batches.
DEFAULT_RANGES: dict[str, DimRange] = {
    "batch": DimRange(1, 1, 4),
    "height": DimRange(320, 800, 1344),
    "width": DimRange(320, 1088, 1344),
    "num_classes": DimRange(1, 150, 1000),
    "num_synonyms": DimRange(1, 3, 16),
    "num_prompts": DimRange(1, 128, 128),
    "num_points": DimRange(1, 64, 64),
}


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: a range for every free symbolic dim (derived dims follow)."""

    ranges: tuple[tuple[str, DimRange], ...]

    @staticmethod
    def of(ranges: Mapping[str, DimRange]) -> "Profile":
        for name in ("height", "width"):
            r = ranges.get(name)
            if r is not None and any(v % SIZE_DIVISIBILITY for v in (r.min, r.opt, r.max)):
                raise InputError(f"--shapes {name}={r.text()}: the padded input {name} is a multiple of "
                                 f"{SIZE_DIVISIBILITY}; round each value to one")
        return Profile(tuple(sorted(ranges.items())))

    def range_of(self, name: str) -> Optional[DimRange]:
        """The range of ``name``, derived ones (``h8`` = height / 8) included; None when not covered."""
        ranges = dict(self.ranges)
        if name in ranges:
            return ranges[name]
        match = _STRIDED.fullmatch(name)
        if match:
            base = ranges.get("height" if match.group(1) == "h" else "width")
            stride = int(match.group(2))
            if base is not None and SIZE_DIVISIBILITY % stride == 0:
                return DimRange(base.min // stride, base.opt // stride, base.max // stride)
        return None

    def covers(self, name: str) -> bool:
        return self.range_of(name) is not None

    def shapes(self, spec: GraphSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """{input name: (min shape, opt shape, max shape)} of ``spec`` under this profile."""
        out = {}
        for t in spec.inputs:
            dims = []
            for d in t.dims:
                if isinstance(d, int):
                    dims.append(DimRange(d, d, d))
                    continue
                r = self.range_of(d)
                if r is None:
                    raise InputError(f"{spec.name}.{t.name}: no range for dim {d!r}; give one with --shapes "
                                     f"{d}=MIN:OPT:MAX")
                dims.append(r)
            out[t.name] = tuple(tuple(getattr(r, k) for r in dims) for k in ("min", "opt", "max"))
        return out

    def to_json(self) -> dict[str, list[int]]:
        return {name: [r.min, r.opt, r.max] for name, r in self.ranges}

    @staticmethod
    def from_json(data: Mapping[str, Iterable[int]]) -> "Profile":
        return Profile.of({name: DimRange(*[int(v) for v in values]) for name, values in data.items()})


def parse_shapes(text: str) -> dict[str, DimRange]:
    """``'height=320:800:1344,batch=1:1:4,num_classes=150'`` → {name: DimRange} (one value: fixed)."""
    out: dict[str, DimRange] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"--shapes {text!r}: {item!r} is not NAME=MIN:OPT:MAX")
        if name not in DEFAULT_RANGES:
            derived = " (derived from height / width; give those)" if _STRIDED.fullmatch(name) else ""
            raise InputError(f"--shapes {text!r}: unknown dim {name!r}{derived}; the dims are "
                             f"{', '.join(DEFAULT_RANGES)}")
        try:
            numbers = [int(v) for v in values.split(":")]
        except ValueError:
            raise InputError(f"--shapes {text!r}: {item!r} must give integers NAME=MIN:OPT:MAX") from None
        if len(numbers) == 1:
            numbers *= 3
        if len(numbers) != 3:
            raise InputError(f"--shapes {text!r}: {item!r} must be NAME=MIN:OPT:MAX or NAME=VALUE")
        if name in out:
            raise InputError(f"--shapes {text!r}: {name} is given twice")
        out[name] = DimRange(*numbers)
    return out


def profiles_from(shapes: Optional[Iterable[str]] = None) -> tuple[Profile, ...]:
    """One profile per ``--shapes`` text (each over the defaults), or the default profile alone."""
    texts = [s for s in (shapes or ()) if s and s.strip()]
    if not texts:
        return (Profile.of(DEFAULT_RANGES),)
    return tuple(Profile.of({**DEFAULT_RANGES, **parse_shapes(t)}) for t in texts)


def shapes_text(profile: Profile) -> str:
    """The ``--shapes`` text of a profile (recorded in the rebuild command)."""
    return ",".join(f"{name}={r.text()}" for name, r in profile.ranges)
