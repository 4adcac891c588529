"""The CPU's vector and matrix units, from Linux's ``/proc/cpuinfo``: what decides whether int8 and bf16 pay.

``cmpf doctor`` lists them; ``cmpf.runtime.load_runners`` warns when int8 files are about to run on a CPU
without int8 dot-product units (VNNI or AMX), where they are no faster than fp32 and less exact.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flag -> name; what decides which reduced-precision CPU paths run natively
FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx_vnni", "AVX-VNNI"), ("avx512_vnni", "AVX-512 VNNI"),
            ("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX-BF16"), ("amx_int8", "AMX-INT8"))
INT8_DOT_PRODUCTS = frozenset({"avx_vnni", "avx512_vnni", "amx_int8"})
BF16_UNITS = frozenset({"avx512_bf16", "amx_bf16"})
# measured on 2 cores of an AVX2-only AMD EPYC (benchmarks/results/sam_int8_cpu_epyc-avx2.md, int8_saturation_*)
WITHOUT_INT8_UNITS = ("no VNNI or AMX: int8 files run hardly faster than fp32 on such CPUs (SAM ViT-B on an AVX2 "
                      "EPYC: ONNX Runtime 1.1x, OpenVINO 0.6x the fp32 speed) and ONNX Runtime's int8 products can "
                      "saturate (the tiny model's SAM: 4.8x the error of its Q/DQ math; SAM ViT-B: 1.1x); run fp32, or "
                      "int8 files written by `cmpf quantize --reduce-range` (7-bit weights cannot saturate)")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: Optional[frozenset[str]]  # None: unknown (no flags line, or not Linux)

    @property
    def features(self) -> list[str]:
        return [name for flag, name in FEATURES if flag in (self.flags or ())]

    @property
    def int8_dot_products(self) -> Optional[bool]:
        return None if self.flags is None else bool(self.flags & INT8_DOT_PRODUCTS)

    @property
    def bf16_units(self) -> Optional[bool]:
        return None if self.flags is None else bool(self.flags & BF16_UNITS)


def cpu_info(cpuinfo: Optional[str] = None) -> CpuInfo:
    """This machine's CPU (``cpuinfo``: the text of a ``/proc/cpuinfo`` instead)."""
    if cpuinfo is None:
        cpuinfo = CPUINFO.read_text(errors="replace") if CPUINFO.is_file() else ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)  # the last CPU's lines
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "flags" not in fields:
        return CpuInfo(platform.processor() or "unknown", None)
    return CpuInfo(fields.get("model name", "unknown"), frozenset(fields["flags"].split()))
