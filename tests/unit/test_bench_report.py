"""`cmpf bench`: percentiles, the report files (JSON / CSV / Markdown / PNG), the batch sweep on the tiny
preset, `--compare` ratios and one-line errors. Timings are not asserted, only their consistency."""

from __future__ import annotations

import csv
import json

import pytest

from cmpf.bench.timing import percentile, summarize


def test_summarize_percentiles():
    t = summarize([float(i) for i in range(1, 101)])
    assert (t.p50_ms, t.min_ms, t.max_ms, t.iters) == (50.5, 1.0, 100.0, 100)
    assert t.p90_ms == pytest.approx(90.1) and t.p95_ms == pytest.approx(95.05) and t.p99_ms == pytest.approx(99.01)
    assert t.std_ms == pytest.approx(29.011, abs=1e-3)
    assert percentile([3.0], 99) == 3.0 and summarize([2.0]).std_ms == 0.0


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """One eager tiny bench, batch 1 and 2 at one fixed shape."""
    from cmpf.cli import main

    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--preset", "tiny", "--backend", "torch", "--iters", "1", "--warmup", "0", "--batch", "1,2",
                 "--shapes", "96x128", "--out", str(out)]) == 0
    return out


def test_bench_files(bench_dir):
    report = json.loads((bench_dir / "bench.json").read_text())
    assert report["schema"] == "cmpf.bench/1" and report["model"] == "tiny" and report["backend"] == "torch"
    stages = [r["stage"] for r in report["stages"] if r["batch"] == 1]
    assert stages[0] == "preprocess" and stages[-3:] == ["ensemble", "postprocess", "segment"] and "decoder" in stages
    assert {r["batch"] for r in report["stages"]} == {1, 2} and {tuple(r["shape"]) for r in report["stages"]} == {(96, 128)}
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
    assert "| segment" in out and "| 2.000 " in out and "| 0.500 " in out
    assert (tmp_path / "compare.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--batch", "1,x"], "--batch '1,x': give comma-separated integers"),
    (["--batch", "0"], "batch sizes must be >= 1"),
    (["--shapes", "96by128"], "--shapes '96by128': give HxW sizes"),
    (["--backend", "tensorrt"], "invalid choice"),
])
def test_bad_input(argv, message, capsys):
    from cmpf.cli import main

    if argv[0] == "--backend":  # argparse's own choice check exits 2 with usage
        with pytest.raises(SystemExit) as e:
            main(["bench", "--preset", "tiny", *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err
        return
    assert main(["bench", "--preset", "tiny", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {err[0][7:]}"] and message in err[0]


def test_compare_rejects_other_json(tmp_path, capsys):
    from cmpf.cli import main

    (tmp_path / "x.json").write_text("[1, 2]")
    assert main(["bench", "--compare", str(tmp_path / "x.json"), str(tmp_path / "x.json")]) == 2
    assert "not a cmpf bench report" in capsys.readouterr().err
