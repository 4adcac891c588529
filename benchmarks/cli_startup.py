"""How long ``cmpf --help`` and every ``cmpf COMMAND --help`` take: ``results/cli_startup.json``.

    python benchmarks/cli_startup.py [--repeats 5]

Each is a fresh ``python -m cmpf ...`` process (what a user's shell starts), timed from start to
exit; the goal is under 0.5 s, which the CLI meets by importing a command's module (and torch) only
when that command runs. Reports the median and the worst of the repeats, and the load of the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cmpf.bench.environment import environment
from cmpf.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_S = 0.5


def commands() -> list[str]:
    """The subcommands ``cmpf --help`` lists."""
    from cmpf.cli import COMMANDS

    return list(COMMANDS)


def timed(argv: list[str]) -> float:
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cmpf", *argv], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - tic


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS / "cli_startup.json")
    args = p.parse_args()
    timed(["--help"])  # file-system caches warm
    rows = {}
    for argv in [["--help"], ["--version"]] + [[c, "--help"] for c in commands()]:
        seconds = [timed(argv) for _ in range(args.repeats)]
        rows[" ".join(argv)] = {"median_s": statistics.median(seconds), "max_s": max(seconds)}
        print(f"cmpf {' '.join(argv):28s} median {rows[' '.join(argv)]['median_s']:.3f} s, max {max(seconds):.3f} s")
    worst = max(r["median_s"] for r in rows.values())
    print(f"worst median {worst:.3f} s ({'within' if worst < GOAL_S else 'above'} the {GOAL_S} s goal); "
          f"load average {os.getloadavg()[0]:.1f}")
    write_json(args.out, {"benchmark": "cli_startup", "goal_s": GOAL_S, "repeats": args.repeats, "commands": rows,
                          "worst_median_s": worst, "machine": environment()})
    print(f"wrote {args.out}")
    return 0 if worst < GOAL_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
