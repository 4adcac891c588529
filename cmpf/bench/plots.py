"""PNG plots of bench reports (matplotlib, headless ``Agg``): latency by stage (stacked), latency vs
batch, and a backend × precision comparison of several reports. Input: report JSON dicts.
"""

from __future__ import annotations

from pathlib import Path

from cmpf.bench.stages import END_TO_END
from cmpf.errors import require
from cmpf.io import atomic_write

STACKED = ("preprocess", "ensemble", "postprocess")  # plus every graph row


def _pyplot():
    matplotlib = require("matplotlib", "bench", "cmpf bench plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    fig.clf()
    return out


def _label(row: dict) -> str:
    shape = "as given" if row["shape"] is None else f"{row['shape'][0]}x{row['shape'][1]}"
    return f"b{row['batch']} {shape}"


def plot_stages(report: dict, path: str | Path) -> Path:
    """One stacked bar per (batch, shape): the p50 of every stage, with the end-to-end p50 marked."""
    plt = _pyplot()
    configs: dict[str, dict[str, float]] = {}
    for r in report["stages"]:
        configs.setdefault(_label(r), {})[r["stage"]] = r["p50_ms"]
    stages = [s for s in next(iter(configs.values())) if s != END_TO_END]
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(configs)), 4))
    bottom = [0.0] * len(configs)
    for stage in stages:
        values = [c.get(stage, 0.0) for c in configs.values()]
        ax.bar(list(configs), values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.scatter(list(configs), [c.get(END_TO_END, float("nan")) for c in configs.values()], color="black", marker="_",
               s=600, label="end to end", zorder=3)
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"{report['model']}: {report['backend']} {report['precision']}, latency by stage")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    return _save(fig, Path(path))


def plot_batch(report: dict, path: str | Path) -> Path:
    """End-to-end p50 and images/s against batch size, one line per shape."""
    plt = _pyplot()
    fig, (lat, tput) = plt.subplots(1, 2, figsize=(8, 3.5))
    by_shape: dict[str, list[dict]] = {}
    for r in report["stages"]:
        if r["stage"] == END_TO_END:
            by_shape.setdefault(_label(r).split(" ", 1)[1], []).append(r)
    for shape, rows in by_shape.items():
        rows.sort(key=lambda r: r["batch"])
        batches = [r["batch"] for r in rows]
        lat.plot(batches, [r["p50_ms"] for r in rows], marker="o", label=shape)
        tput.plot(batches, [1e3 * r["batch"] / r["p50_ms"] for r in rows], marker="o", label=shape)
    lat.set(xlabel="batch", ylabel="end-to-end p50 (ms)", title="latency vs batch")
    tput.set(xlabel="batch", ylabel="images/s", title="throughput vs batch")
    lat.legend(fontsize=7)
    return _save(fig, Path(path))


def plot_comparison(reports: list[dict], path: str | Path) -> Path:
    """Grouped bars: the p50 of every stage, one bar per report (backend × precision), first config."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    first = {(r["batch"], str(r["shape"])) for r in reports[0]["stages"][:1]}
    stages = [r["stage"] for r in reports[0]["stages"] if (r["batch"], str(r["shape"])) in first]
    width = 0.8 / len(reports)
    for i, rep in enumerate(reports):
        p50 = {r["stage"]: r["p50_ms"] for r in rep["stages"] if (r["batch"], str(r["shape"])) in first}
        ax.bar([k + i * width for k in range(len(stages))], [p50.get(s, 0.0) for s in stages], width,
               label=f"{rep['backend']} {rep['precision']}")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(stages))], stages, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="p50 latency (ms)", title=f"{reports[0]['model']}: backend x precision")
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def plot_report(report: dict, out_dir: str | Path, stem: str = "bench") -> list[Path]:
    """``<stem>_stages.png`` and ``<stem>_batch.png`` under ``out_dir``."""
    out = Path(out_dir)
    return [plot_stages(report, out / f"{stem}_stages.png"), plot_batch(report, out / f"{stem}_batch.png")]
