"""The benchmark scripts themselves work (they are run by hand, on a GPU for kernels.py): a smoke run of
``benchmarks/kernels.py`` under the Triton interpreter and the Markdown rebuild of ``benchmarks/graphs.py``.
Timings are not asserted (benchmarks are not timed tests); the reported parity is."""

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
