"""CPU seconds per image of the eager reference model, per stage and end to end.

Random weights (timing does not depend on them), the stored-text path (the text encoder runs once per
vocabulary and is excluded), ADE-150-sized vocabulary (150 classes, up to 12 synonyms).

    .venv/bin/python benchmarks/reference_cpu.py --preset frozenseg-convnext-large \
        --sizes 300x400 800x1067 --out benchmarks/results/reference_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from cmpf.model import build_model
from cmpf.config import InferenceOptions
from cmpf.pipeline import segment
from cmpf.runtime.torch_runner import torch_runners
from cmpf.text import TextCache, TextClassifier
from cmpf.vocabulary import Vocabulary


class Timed:
    """Wraps a runner and records the wall time of each call."""

    def __init__(self, runner, log: list):
        self.runner, self.log, self.graph, self.backend = runner, log, runner.graph, runner.backend

    def __call__(self, inputs):
        t = time.perf_counter()
        out = self.runner(inputs)
        self.log.append((self.graph.name, time.perf_counter() - t))
        return out


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="frozenseg-convnext-large")
    p.add_argument("--sizes", nargs="+", default=["300x400", "800x1067"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/reference_cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.preset)
    d = model.backbone.embed_dim
    k, s = 150, 12
    text = TextClassifier(torch.nn.functional.normalize(torch.randn(k, s, d), dim=-1), torch.ones(k, s, dtype=torch.bool))
    vocab = Vocabulary(tuple((f"class{i}",) for i in range(k)), tuple(i % 2 == 0 for i in range(k)))
    log: list = []
    runners = {name: Timed(r, log) for name, r in torch_runners(model).items()}
    cache = TextCache(runners["text_encoder"])
    cache.put(vocab, text)  # a fixed random classifier: the text encoder is not part of the per-image time
    rows = []
    for size in args.sizes:
        h, w = (int(x) for x in size.split("x"))
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        totals, stages, load = [], {}, list(os.getloadavg())  # other work on the machine skews the timings
        for i in range(args.repeats + 1):  # first run is warm-up
            log.clear()
            t = time.perf_counter()
            segment([image], vocab, runners, model.cfg, InferenceOptions(resize=False), text_cache=cache)
            total = time.perf_counter() - t
            if i:
                totals.append(total)
                for name, sec in log:
                    stages.setdefault(name, []).append(sec)
        row = {"size": size, "seconds_per_image_median": statistics.median(totals), "runs": totals,
               "stages_median_s": {n: statistics.median(v) for n, v in stages.items()},
               "load_average_1_5_15min_at_start": load}
        print(json.dumps(row))
        rows.append(row)
    result = {"preset": args.preset, "threads": args.threads, "cpu": cpu_name(), "cores": os.cpu_count(),
              "torch": torch.__version__, "vocabulary": f"{k} classes x {s} synonyms", "results": rows,
              "note": "eager reference model, float32, no resize (the size given is the model input); "
                      "stages are graph calls, the rest is pre/post-processing at that size"}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
