"""`cmpf bench`: percentiles, the report files (JSON / CSV / Markdown / PNG), the batch sweep on the tiny
preset, host transfer, the CUDA-graph choices (CPU side), the backend × precision matrix, `--compare`
ratios and one-line errors. Timings are not asserted, only their consistency."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import exported
from cmpf.bench.timing import TimingMode, percentile, summarize
from cmpf.errors import InputError


def test_summarize_percentiles():
    t = summarize([float(i) for i in range(1, 101)])
    assert (t.p50_ms, t.min_ms, t.max_ms, t.iters) == (50.5, 1.0, 100.0, 100)
    assert t.p90_ms == pytest.approx(90.1) and t.p95_ms == pytest.approx(95.05) and t.p99_ms == pytest.approx(99.01)
    assert t.std_ms == pytest.approx(29.011, abs=1e-3)
    assert percentile([3.0], 99) == 3.0 and summarize([2.0]).std_ms == 0.0


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """One eager tiny bench, batch 1 and 2 at one fixed shape, host transfer included (a no-op on CPU)."""
    from cmpf.cli import main

    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--preset", "tiny", "--backend", "torch", "--iters", "1", "--warmup", "0", "--batch", "1,2",
                 "--shapes", "96x128", "--host-transfer", "include", "--out", str(out)]) == 0
    return out


def test_bench_files(bench_dir):
    report = json.loads((bench_dir / "bench.json").read_text())
    assert report["schema"] == "cmpf.bench/1" and report["model"] == "tiny" and report["backend"] == "torch"
    stages = [r["stage"] for r in report["stages"] if r["batch"] == 1]
    assert stages[0] == "preprocess" and stages[-3:] == ["ensemble", "postprocess", "segment"] and "decoder" in stages
    assert {r["batch"] for r in report["stages"]} == {1, 2}
    assert {tuple(r["shape"]) for r in report["stages"]} == {(96, 128)}
    for r in report["stages"]:
        assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
    tput = {t["batch"]: t["images_per_s"] for t in report["throughput"]}
    e2e = {r["batch"]: r["p50_ms"] for r in report["stages"] if r["stage"] == "segment"}
    assert tput[2] == pytest.approx(2e3 / e2e[2])
    assert all(m["peak_rss_mib"] > 50 for m in report["memory"])
    env = report["environment"]
    assert env["logical_cores"] >= 1 and len(env["load_average_1_5_15min"]) == 3 and env["versions"]["torch"]
    rows = list(csv.DictReader((bench_dir / "bench.csv").open()))
    assert len(rows) == len(report["stages"]) and rows[0]["shape"] == "96x128"
    md = (bench_dir / "bench.md").read_text()
    assert "| segment" in md and "images/s" in md and "load average" in md
    assert report["settings"]["host_transfer"] and report["settings"]["timer"] == "wall"
    assert "host transfer included, a no-op on --device cpu" in md and report["plan"] is None
    modes = {r["stage"]: r["host_transfer"] for r in report["stages"]}
    assert modes["decoder"] and modes["segment"] and not modes["postprocess"] and "wall+host" in md
    for png in ("bench_stages.png", "bench_batch.png"):
        assert (bench_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare(bench_dir, tmp_path, capsys):
    from cmpf.cli import main

    a = json.loads((bench_dir / "bench.json").read_text())
    b = json.loads(json.dumps(a))
    for r in b["stages"]:
        r["p50_ms"], r["p90_ms"] = 2 * r["p50_ms"], 2 * r["p90_ms"]
    for t in b["throughput"]:
        t["images_per_s"] /= 2
    (tmp_path / "b.json").write_text(json.dumps(b))
    capsys.readouterr()
    assert main(["bench", "--compare", str(bench_dir / "bench.json"), str(tmp_path / "b.json"), "--out",
                 str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| segment" in out and "| 2.000 " in out and "| 0.500 " in out and "timed differently" not in out
    assert (tmp_path / "compare.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--batch", "1,x"], "--batch '1,x': give comma-separated integers"),
    (["--batch", "0"], "batch sizes must be >= 1"),
    (["--shapes", "96by128"], "--shapes '96by128': give HxW sizes"),
    (["--backend", "tflite"], "unknown backend 'tflite'; choose one of torch, onnxruntime"),
    (["--backend", "tensorrt"], "for --backend tensorrt export it first"),
    (["--precision", "fp32,fp33"], "unknown precision 'fp33'"),
])
def test_bad_input(argv, message, capsys):
    from cmpf.cli import main

    assert main(["bench", "--preset", "tiny", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {err[0][7:]}"] and message in err[0]


def test_compare_rejects_other_json(tmp_path, capsys):
    from cmpf.cli import main

    (tmp_path / "x.json").write_text("[1, 2]")
    assert main(["bench", "--compare", str(tmp_path / "x.json"), str(tmp_path / "x.json")]) == 2
    assert "not a cmpf bench report" in capsys.readouterr().err


class FakeRunner:
    graph = None

    def __init__(self, backend):
        self.backend, self.calls = backend, 0

    def __call__(self, inputs):
        self.calls += 1
        return {"y": inputs["x"] * 2}


def test_cuda_graph_choices_on_the_cpu_side():
    """Which runners are captured and what the report says otherwise; the capture itself needs a GPU."""
    from cmpf.bench.cuda_graphs import capture_refusal
    from cmpf.bench.stages import graph_call

    cuda = torch.device("cuda")  # a device name only: nothing runs on it here
    assert capture_refusal(FakeRunner("torch"), cuda) is None and capture_refusal(FakeRunner("aoti"), cuda) is None
    assert "launches work outside the current torch stream" in capture_refusal(FakeRunner("onnxruntime"), cuda)
    assert "need a CUDA device, not cpu" in capture_refusal(FakeRunner("torch"), "cpu")
    runner, feed = FakeRunner("torch"), {"x": torch.ones(2)}
    call, captured, note = graph_call(runner, feed, TimingMode(host_transfer=True, cuda_graph=True))
    assert not captured and note.startswith("not captured: CUDA graphs need a CUDA device")
    assert torch.equal(call()["y"], torch.full((2,), 2.0)) and runner.calls == 1
    assert graph_call(runner, feed, TimingMode())[1:] == (False, None)


@pytest.mark.parametrize("flag", ["--cuda-graph", "--cuda-events"])
def test_cuda_modes_need_a_cuda_device(flag, capsys):
    from cmpf.cli import main

    assert main(["bench", "--preset", "tiny", flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {flag} needs a CUDA --device, not cpu; drop it or give --device cuda"]


def test_parse_precisions():
    from cmpf.bench.matrix import parse_precisions

    assert parse_precisions(None) == (None,) and parse_precisions("fp32,int8") == ("fp32", "int8")
    assert parse_precisions("sam_image_encoder=int8,decoder=fp16") == ("sam_image_encoder=int8,decoder=fp16",)
    assert parse_precisions("fp32;decoder=int8") == ("fp32", "decoder=int8")
    with pytest.raises(InputError, match="unknown precision 'fp33'"):
        parse_precisions("fp32,fp33")


def test_matrix_ratios_and_markdown(bench_dir):
    """The matrix report of two runs: every p50 against the first's, skipped combinations as one line."""
    from cmpf.bench.matrix import matrix_csv, matrix_markdown, matrix_report

    a = json.loads((bench_dir / "bench.json").read_text())
    b = json.loads(json.dumps(a))
    b["backend"], b["precision"] = "onnxruntime", "int8"
    for r in b["stages"]:
        r["p50_ms"] *= 2
    for t in b["throughput"]:
        t["images_per_s"] /= 2
    skipped = [{"backend": "openvino", "precision": "int8", "reason": "openvino is not installed; pip install x"}]
    matrix = matrix_report([a, b], skipped)
    assert matrix["schema"] == "cmpf.bench-matrix/1" and matrix["baseline"] == "torch fp32"
    assert [c["ran"] for c in matrix["combinations"]] == [True, True, False]
    ratios = {(r["backend"], r["stage"], r["batch"]): r["ratio_p50"] for r in matrix["ratios"]}
    assert ratios[("torch", "segment", 2)] == 1.0 and ratios[("onnxruntime", "segment", 2)] == pytest.approx(2.0)
    md = matrix_markdown(matrix)
    assert "- skipped `openvino int8`: openvino is not installed" in md and "| onnxruntime int8" in md
    assert "(2.00)" in md and "(0.50)" in md
    assert len(matrix_csv(matrix).splitlines()) == 1 + 2 * len(a["stages"])


@pytest.fixture(scope="module")
def artifacts():
    pytest.importorskip("onnxruntime")
    return exported.tiny_export(("onnx",))


def test_matrix_from_one_run(artifacts, tmp_path, capsys):
    """onnxruntime,aoti × fp32,int8 on an fp32 ONNX export: one combination runs, three are one-line skips."""
    from cmpf.cli import main

    out = tmp_path / "m"
    assert main(["bench", "--artifacts", str(artifacts), "--backend", "onnxruntime,aoti", "--precision", "fp32,int8",
                 "--iters", "1", "--warmup", "0", "--shapes", "64x96", "--out", str(out)]) == 0
    matrix = json.loads((out / "matrix.json").read_text())
    ran = [(c["backend"], c["precision"]) for c in matrix["combinations"] if c["ran"]]
    skipped = {(c["backend"], c["precision"]): c["reason"] for c in matrix["combinations"] if not c["ran"]}
    assert ran == [("onnxruntime", "fp32")] and set(skipped) == {("onnxruntime", "int8"), ("aoti", "fp32"),
                                                                  ("aoti", "int8")}
    assert "no graph has a int8 onnx file" in skipped[("onnxruntime", "int8")]
    assert "was not exported as aoti" in skipped[("aoti", "fp32")]
    assert all("\n" not in r for r in skipped.values())
    assert matrix["runs"][0]["plan"]["decoder"] == "fp32" and {r["ratio_p50"] for r in matrix["ratios"]} == {1.0}
    assert "- skipped `aoti fp32`:" in (out / "matrix.md").read_text()
    assert (out / "matrix.png").read_bytes()[:4] == b"\x89PNG" and (out / "matrix.csv").is_file()
    capsys.readouterr()
    assert main(["bench", "--compare", str(out / "matrix.json"), str(out / "matrix.json")]) == 2
    assert "a backend × precision matrix" in capsys.readouterr().err


def test_matrix_with_nothing_to_run(artifacts, capsys):
    from cmpf.cli import main

    assert main(["bench", "--artifacts", str(artifacts), "--backend", "aoti,torch", "--precision", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no backend × precision combination could run; aoti int8:")
