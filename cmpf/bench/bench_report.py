"""A bench report's files: JSON (``cmpf.bench/1``), CSV and Markdown; ``compare`` of two JSON reports.
(A backend × precision matrix has its own, ``cmpf.bench.matrix``.)

All three are written from the JSON dict, so a committed JSON regenerates its tables, and
``cmpf bench --compare A.json B.json`` works on files from other machines or builds.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from cmpf.bench.bench_run import MATRIX_SCHEMA, SCHEMA
from cmpf.bench.parity import format_table
from cmpf.errors import InputError
from cmpf.io import write_json, write_text

CSV_FIELDS = ("stage", "backend", "batch", "shape", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms",
              "min_ms", "max_ms", "iters", "mode")


def read_bench(path: str | Path) -> dict[str, Any]:
    """A bench report's JSON after checking its schema (one line naming the file otherwise)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e.msg} at line {e.lineno}); give a file written by `cmpf bench --out`")
    if isinstance(data, dict) and data.get("schema") == MATRIX_SCHEMA:
        raise InputError(f"{path}: a backend × precision matrix ({MATRIX_SCHEMA}), whose ratios are in its matrix.md; "
                         f"--compare takes two single-combination reports ({SCHEMA}, bench.json)")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InputError(f"{path}: not a cmpf bench report ({SCHEMA}); give a file written by `cmpf bench --out`")
    return data


def shape_text(s) -> str:
    return "as given" if s is None else f"{s[0]}x{s[1]}"


def mode(row: dict) -> str:
    """How a row was timed, in one word: ``wall``, ``cuda-events``, plus ``+host`` and ``+graph``."""
    return (row.get("timer", "wall") + ("+host" if row.get("host_transfer") else "")
            + ("+graph" if row.get("cuda_graph") else ""))


def environment_lines(env: dict) -> list[str]:
    """The machine block of a report's Markdown."""
    gpu = env.get("gpu") or {}
    return [f"- CPU: {env.get('cpu')} ({env.get('logical_cores')} logical cores, {env.get('torch_threads')} torch "
            f"threads); GPU: {gpu.get('name', 'none')}{' driver ' + str(gpu['driver']) if gpu.get('driver') else ''}",
            f"- load average at start (1/5/15 min): {env.get('load_average_1_5_15min')}",
            f"- versions: {', '.join(f'{k} {v}' for k, v in env.get('versions', {}).items() if v)}"]


def to_csv(report: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report["stages"]:
        writer.writerow({**row, "shape": shape_text(row["shape"]), "mode": mode(row)})
    return buf.getvalue()


def to_markdown(report: dict) -> str:
    plan = report.get("plan")
    files = (", ".join(f"{g} {p}" for g, p in plan.items()) if plan else "the eager model")
    lines = [f"# cmpf bench: {report['model']} on {report['backend']} ({report['precision']})", "",
             *environment_lines(report["environment"]), f"- files: {files}", "",
             format_table(["stage", "batch", "shape", "mode", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "mean ms",
                           "std ms", "min ms"],
                          [[r["stage"], r["batch"], shape_text(r["shape"]), mode(r)] + [f"{r[k]:.2f}" for k in
                           ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms")]
                           for r in report["stages"]]), "",
             format_table(["batch", "shape", "images/s", "peak RSS MiB", "peak device MiB"],
                          [[t["batch"], shape_text(t["shape"]), f"{t['images_per_s']:.3f}", f"{m['peak_rss_mib']:.0f}",
                            "-" if m["peak_device_mib"] is None else f"{m['peak_device_mib']:.0f}"]
                           for t, m in zip(report["throughput"], report["memory"])]), ""]
    lines += [f"note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines) + "\n"


def write_bench(report: dict, out_dir: str | Path, stem: str = "bench") -> list[Path]:
    """``<stem>.json``, ``.csv`` and ``.md`` under ``out_dir``."""
    out = Path(out_dir)
    return [write_json(out / f"{stem}.json", report), write_text(out / f"{stem}.csv", to_csv(report)),
            write_text(out / f"{stem}.md", to_markdown(report))]


def compare(a: dict, b: dict) -> str:
    """Per (stage, batch, shape) in both: B / A of p50 and p90 (below 1: B is faster), and images/s."""
    key = lambda r: (r["stage"], r["batch"], shape_text(r["shape"]))  # noqa: E731
    rows_a = {key(r): r for r in a["stages"]}
    rows = []
    for r in b["stages"]:
        if key(r) in rows_a:
            ra = rows_a[key(r)]
            rows.append([*key(r), f"{ra['p50_ms']:.2f}", f"{r['p50_ms']:.2f}", f"{r['p50_ms'] / ra['p50_ms']:.3f}",
                         f"{r['p90_ms'] / ra['p90_ms']:.3f}"])
    if not rows:
        raise InputError("the two reports share no (stage, batch, shape); bench both with the same --batch/--shapes")
    name = lambda d: f"{d['model']} {d['backend']} {d['precision']}"  # noqa: E731
    header = f"A = {name(a)} ({a['environment'].get('cpu')}), B = {name(b)} ({b['environment'].get('cpu')})"
    settings_a, settings_b = a.get("settings", {}), b.get("settings", {})
    differ = [f"{k} A {settings_a.get(k)} B {settings_b.get(k)}" for k in sorted(set(settings_a) | set(settings_b))
              if k not in ("iters", "warmup") and settings_a.get(k) != settings_b.get(k)]
    if differ:
        header += "\ntimed differently: " + "; ".join(differ)
    table = format_table(["stage", "batch", "shape", "A p50 ms", "B p50 ms", "B/A p50", "B/A p90"], rows)
    tput_a = {(t["batch"], shape_text(t["shape"])): t["images_per_s"] for t in a["throughput"]}
    tput = [[t["batch"], shape_text(t["shape"]), f"{tput_a[k]:.3f}", f"{t['images_per_s']:.3f}",
             f"{t['images_per_s'] / tput_a[k]:.3f}"]
            for t in b["throughput"] if (k := (t["batch"], shape_text(t["shape"]))) in tput_a]
    return "\n\n".join([header, table, format_table(["batch", "shape", "A images/s", "B images/s", "B/A"], tput)])
