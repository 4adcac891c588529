"""The benchmark scripts themselves work (they are run by hand, on a GPU for kernels.py): a smoke run of
``benchmarks/kernels.py`` under the Triton interpreter, the Markdown rebuild of ``benchmarks/graphs.py``
and the exactness of the rewrites ``benchmarks/sam_attention_variants.py`` times. Timings are not asserted
(benchmarks are not timed tests); the reported parity is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], **env: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_kernels_benchmark_smoke(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "kernels.json"
    _run(["benchmarks/kernels.py", "--smoke", "--no-compile", "--dtypes", "fp32", "--out", str(out)],
         TRITON_INTERPRET="1")
    report = json.loads(out.read_text())
    assert {r["op"] for r in report["results"]} == {"masked_attention", "mask_pooling", "ms_deform_attn"}
    for r in report["results"]:
        assert r["ms"]["triton"] > 0 and all(v > 0 for v in r["speedup"].values()), r
        err = r["max_abs_err"]
        assert err["triton"] <= 2 * err["torch"] + 1e-6, r  # the rule against the fp64 reference


@pytest.mark.parametrize("model", ["tiny", "frozenseg-convnext-large"])
def test_graphs_markdown_rebuilds_from_the_committed_json(model):
    report = ROOT / "benchmarks" / "results" / f"graphs_{model}.json"
    data = json.loads(report.read_text())
    table = _run(["benchmarks/graphs.py", "--markdown-from", str(report)])  # prints, writes nothing
    assert table == (report.with_suffix(".md")).read_text() + "\n"  # the committed table is this JSON's
    for graph in data["input_shapes"]:
        assert f"| {graph}" in table


def test_sam_attention_rewrites_compute_the_official_modules_numbers(monkeypatch):
    """``benchmarks/sam_attention_variants.py`` times rewrites that must be exact: same outputs as
    segment-anything's modules, here at a small size with window padding (16 tokens, windows of 7)."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import sam_attention_variants as variants

    x = torch.randn(2, 16, 16, 64)
    with torch.no_grad():
        for case, modules in variants.modules(grid=16, dim=64, heads=2, window=7).items():
            official = modules["official"](x)
            for name, module in modules.items():
                torch.testing.assert_close(module(x), official, rtol=1e-5, atol=1e-6, msg=f"{case}: {name}")
    windowed = variants.modules(grid=16, dim=64, heads=2, window=7)["windowed block"]
    real = variants._pad_with
    monkeypatch.setattr(variants, "_pad_with", lambda t, value, size: real(t, torch.zeros_like(value), size))
    with torch.no_grad():  # zeros in the padded tokens' qkv (not its bias) is a wrong rewrite: it must show
        assert not torch.allclose(windowed["unpadded"](x), windowed["official"](x), rtol=1e-3, atol=1e-4)
