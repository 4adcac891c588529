"""End-to-end CPU seconds per image and parity for every backend × precision of one artifact directory.

    python benchmarks/cpu_precision.py --artifacts /tmp/golden --golden --calib 8 \
        --combos onnxruntime:fp32,openvino:fp32,openvino:bf16,onnxruntime:int8,openvino:int8

The measurement of issue 18's goals: the full ``frozenseg-convnext-large`` with the golden weights
(``--golden`` exports them into ``--artifacts`` first, from ``../shared/reference/golden``), the
golden ``input_image.png`` (300×400) without resize, ADE-150 vocabulary, text embeddings cached:
with the golden ADE-150 vocabulary every combination is given the official run's text classifier
(``B_ade150_golden.npz``, 403 × 768; ``--encode-text`` encodes it with each combination's text
encoder instead, minutes per combination on 2 cores), so the image side is what is measured and
compared; the timed calls never run the text encoder. ``--calib N`` quantises int8 with N
calibration images made from the input image (crops and flips; the only real image here) when the
directory has no int8 files yet (calibrated on the same text: the text encoder stays fp32 unless
``--encode-text``). Each combination: one warm-up, ``--repeats`` timed calls (p50,
p90, mean, min, per-graph medians), then parity against ``onnxruntime:fp32``: each graph output on
the pipeline's inputs (L2-relative) and end to end (semantic agreement, PQ with fp32 as ground
truth). Writes ``results/cpu_precision_<model>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cmpf.bench.agreement import image_agreement
from cmpf.bench.parity import capture_graph_inputs, format_table, graph_parity
from cmpf.errors import CmpfError
from cmpf.io import write_json, write_text
from cmpf.manifest import Manifest
from cmpf.predictor import ModelSource, load_predictor, options_with
from cmpf.tolerances import SEMANTIC_GAP_LOW_PRECISION as DECIDED_GAP
from cmpf.preprocess import load_image
from cmpf.vocabulary import load_vocabulary
from cmpf.bench.environment import environment as machine
from reference_cpu import Timed  # a sibling script of this directory

RESULTS = Path(__file__).parent / "results"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
GOALS_S = {"fp32": 8.0, "bf16": 5.0, "fp16": 5.0, "int8": 3.5}  # issue 18, best backend per precision
AGREEMENT_GOAL = {"fp16": 0.99, "bf16": 0.99, "int8": 0.97}


def decided_agreement(reference, candidate, gap: float = DECIDED_GAP) -> tuple[float, float]:
    """(semantic agreement on the pixels whose fp32 top-2 scores differ by more than ``gap`` of the top one,
    their fraction). The golden weights are random: half the pixels are within 3.4 % of a tie, and a
    precision that moves a class's score by 1 % flips whole near-tie regions, whatever its error elsewhere."""
    top2 = reference.semantic.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > gap * top2[0].abs()
    same = reference.semantic_labels == candidate.semantic_labels
    return float(same[decided].float().mean()), float(decided.float().mean())


def export_golden(directory: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "parity"))
    import golden  # the rule that rebuilds the golden weights (tests/parity/golden.py)

    from cmpf.export.api import ExportConfig, export_model

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "frozenseg_variantB.pth"
        torch.save({"model": golden.golden_state_dict()}, ckpt)
        export_model(ExportConfig("frozenseg-convnext-large", str(directory), checkpoint=str(ckpt)))


def calibration_images(image: Path, n: int, out: Path) -> Path:
    """``n`` crops / flips of ``image`` (at least 3/4 of each side), as the calibration set."""
    from PIL import Image

    rng = np.random.default_rng(0)
    source = Image.open(image).convert("RGB")
    w, h = source.size
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cw, ch = int(w * rng.uniform(0.75, 1)), int(h * rng.uniform(0.75, 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = source.crop((x, y, x + cw, y + ch))
        (crop.transpose(Image.FLIP_LEFT_RIGHT) if i % 2 else crop).save(out / f"calib{i:02d}.png")
    return out


def golden_text(vocabulary):
    """The official run's ADE-150 text classifier, or None when the vocabulary is another one."""
    from cmpf.text import from_synonym_embeddings

    arrays = np.load(REFERENCE / "golden" / "B_ade150_golden.npz")
    synonyms = torch.from_numpy(arrays["text_classifier"])
    if synonyms.shape[0] != sum(vocabulary.num_synonyms):
        return None
    return from_synonym_embeddings(synonyms, vocabulary.num_synonyms)


def golden_tokens() -> torch.Tensor:
    """The official run's first 28 ADE-150 prompts as open_clip tokens (28, 77)."""
    return torch.from_numpy(np.load(REFERENCE / "golden" / "B_ade150_golden.npz")["tokens_first_28_prompts"]).long()


def official_options(predictor, seen_vocab: str):
    """The official ADE-150 evaluation's options: no resize, ``seen`` = the COCO panoptic training classes
    (as ``tests/parity/test_golden.py``; with no seen class every class takes the unseen ensemble weight
    and the golden image has no panoptic segment)."""
    return options_with(predictor.options, resize=False).with_seen(load_vocabulary(seen_vocab).classes)


def measure(artifacts: str, combo: str, image, vocabulary, repeats: int, seen_vocab: str,
            text=None) -> tuple[dict, object, object]:
    backend, precision = combo.split(":")
    predictor = load_predictor(ModelSource(artifacts=artifacts, precision=precision), backend)
    if text is not None:
        predictor.text_cache.put(vocabulary, text)
    options = official_options(predictor, seen_vocab)
    compute = {g: r.inference_precision for g, r in predictor.runners.items() if hasattr(r, "inference_precision")}
    log: list = []
    predictor.runners = {g: Timed(r, log) for g, r in predictor.runners.items()}
    predictor.segment([image], vocabulary, options)  # warm-up; encodes and caches the text
    times, per_graph = [], {}
    for _ in range(repeats):
        log.clear()
        start = time.perf_counter()
        seg = predictor.segment([image], vocabulary, options).segmentations[0]
        times.append(time.perf_counter() - start)
        for graph, seconds in log:
            per_graph.setdefault(graph, []).append(seconds)
    row = {"backend": backend, "precision": precision, "p50_s": statistics.median(times),
           "p90_s": float(np.percentile(times, 90)), "mean_s": statistics.fmean(times), "min_s": min(times),
           "graphs_median_s": {g: statistics.median(v) for g, v in per_graph.items()}}
    if compute:  # OpenVINO's inference precision per graph (int8 files: the ops between the Q/DQ pairs)
        row["openvino_compute"] = compute
    return row, predictor, seg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", required=True)
    p.add_argument("--golden", action="store_true", help="export the golden weights into --artifacts first")
    p.add_argument("--image", default=str(REFERENCE / "golden" / "input_image.png"))
    p.add_argument("--vocab", default=str(REFERENCE / "vocabularies" / "ade20k_150_with_prompt_eng.txt"))
    p.add_argument("--seen-vocab", default=str(REFERENCE / "vocabularies" / "coco_panoptic_with_prompt_eng.txt"),
                   help="training vocabulary whose classes are 'seen' by the ensemble (official: COCO panoptic)")
    p.add_argument("--calib", type=int, default=8, help="calibration images to make if int8 files are missing")
    graphs = "text_encoder,clip_image_encoder,sam_image_encoder,decoder,mask_classifier"  # the SAM masks graph
    # runs only with --sam-ensemble
    p.add_argument("--int8-plan", help="--precision of cmpf quantize for the int8 files (default: every graph; the "
                   "text encoder stays fp32 unless --encode-text, as the timed calls never run it and calibrating it "
                   "encodes the vocabulary's prompts: tens of minutes on 2 cores)")
    p.add_argument("--fp16-plan", default=",".join(f"{g}=fp16" for g in graphs.split(",")))
    p.add_argument("--combos", default="onnxruntime:fp32,openvino:fp32,openvino:bf16,onnxruntime:int8,openvino:int8")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tag", help="results as cpu_precision_<model>_<tag>.* (another artifacts set of the model)")
    p.add_argument("--encode-text", action="store_true",
                   help="encode the vocabulary with each combination's text encoder (default: the golden classifier)")
    args = p.parse_args()

    directory = Path(args.artifacts)
    if args.golden and not (directory / "manifest.json").is_file():
        export_golden(directory)
    combos = args.combos.split(",")
    manifest = Manifest.read(directory)
    vocabulary = load_vocabulary(args.vocab, things="ade20k-150")
    text = None if args.encode_text else golden_text(vocabulary)
    int8_graphs = [g for g in graphs.split(",") if g != "text_encoder" or text is None]
    args.int8_plan = args.int8_plan or ",".join(f"{g}=int8" for g in int8_graphs)
    plans = {"int8": args.int8_plan, "fp16": args.fp16_plan}
    for precision in sorted({c.split(":")[1] for c in combos} & set(plans)):
        if precision in manifest.precisions("decoder", "onnx"):
            continue
        from cmpf.precision.api import QuantizeConfig, quantize_artifacts

        with tempfile.TemporaryDirectory() as tmp:
            calib = calibration_images(Path(args.image), args.calib, Path(tmp) / "calib")
            start = time.perf_counter()
            quantize_artifacts(QuantizeConfig(str(directory), plans[precision], calib_images=str(calib),
                                              vocabulary=vocabulary, text=text))
            print(f"quantized {precision} in {time.perf_counter() - start:.0f} s", flush=True)
    image = load_image(args.image)
    rows, reference = [], None
    skipped = {}
    for combo in combos:
        try:
            row, predictor, seg = measure(str(directory), combo, image, vocabulary, args.repeats, args.seen_vocab, text)
        except CmpfError as e:  # e.g. bf16 on a CPU without bf16 kernels
            skipped[combo] = str(e)
            print(f"{combo}: skipped: {e}", flush=True)
            continue
        if reference is None:  # the first combination is the reference (onnxruntime:fp32)
            inputs = capture_graph_inputs(predictor.runners, [image], vocabulary, predictor.cfg,
                                          official_options(predictor, args.seen_vocab),
                                          text_cache=predictor.text_cache if text is not None else None)
            if text is not None:  # the text encoder did not run: its input is the official run's first 28 prompts
                inputs["text_encoder"] = {"token_ids": golden_tokens()}
            reference = (predictor, seg, inputs)
        ref_pred, ref_seg, inputs = reference
        tensors = graph_parity(ref_pred.runners, predictor.runners, inputs, row["precision"])
        agreement = image_agreement(Path(args.image).name, ref_seg, seg, vocabulary)
        decided, decided_fraction = decided_agreement(ref_seg, seg)
        row.update(ratio_to_first=row["p50_s"] / rows[0]["p50_s"] if rows else 1.0,
                   semantic_agreement=agreement.semantic, pq_vs_fp32=agreement.pq,
                   decided_agreement=decided, decided_fraction=decided_fraction,
                   worst_rel_error={g: max(r.rel_error for r in tensors if r.graph == g) for g in inputs},
                   goal_s=GOALS_S.get(row["precision"]), agreement_goal=AGREEMENT_GOAL.get(row["precision"]))
        rows.append(row)
        print(f"{combo}: p50 {row['p50_s']:.2f} s, semantic agreement {agreement.semantic:.4f}", flush=True)
    report = {"schema": "cmpf.cpu_precision/1", "model": ref_pred.cfg.name, "image": Path(args.image).name,
              "input": f"{image.shape[1]}x{image.shape[2]}, no resize", "vocabulary": Path(args.vocab).name,
              "text": "encoded by each combination" if text is None else "golden ADE-150 classifier (403 x 768), "
                      "shared: the text encoder is not compared", "int8_plan": args.int8_plan,
              "fp16_plan": args.fp16_plan, "seen": Path(args.seen_vocab).name, "repeats": args.repeats, "rows": rows,
              "skipped": skipped, "machine": machine(), "tag": args.tag}
    stem = RESULTS / f"cpu_precision_{report['model']}{'_' + args.tag if args.tag else ''}"
    write_json(stem.with_suffix(".json"), report)
    write_text(stem.with_suffix(".md"), markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(markdown(report))


def markdown(report: dict) -> str:
    graphs = sorted({g for r in report["rows"] for g in r["graphs_median_s"]})
    header = ["backend", "precision", "p50 s", "p90 s", "min s", "× first", "goal s", "sem agree",
              f"agree, gap > {DECIDED_GAP:.0%}", "PQ vs fp32",
              *[f"{g} s" for g in graphs]]
    table = format_table(header, [[r["backend"], r["precision"], f"{r['p50_s']:.2f}", f"{r['p90_s']:.2f}",
                                   f"{r['min_s']:.2f}", f"{r['ratio_to_first']:.2f}",
                                   f"{r['goal_s']:.1f}" if r["goal_s"] else "-", f"{r['semantic_agreement']:.4f}",
                                   f"{r['decided_agreement']:.4f}" if "decided_agreement" in r else "-",
                                   "-" if r["pq_vs_fp32"] is None else f"{r['pq_vs_fp32']:.1f}",
                                   *[f"{r['graphs_median_s'].get(g, float('nan')):.2f}" for g in graphs]]
                                  for r in report["rows"]])
    m = report["machine"]
    return (f"# {report['model']}: end to end on CPU, per backend × precision\n\n{report['image']} "
            f"({report['input']}), {report['vocabulary']}, text cached, {report['repeats']} timed calls after a "
            f"warm-up; seen classes: {report.get('seen', 'none')}. int8 files: `cmpf quantize --precision "
            f"{report['int8_plan']}`; OpenVINO runs the ops between their Q/DQ pairs in bf16 where the CPU has bf16 "
            f"kernels. Machine: {m['cpu']}, "
            f"{m['logical_cores']} logical cores, load average at start {m['load_average_1_5_15min'][0]:.2f}.\n\n"
            f"{table}\nagree, gap > {DECIDED_GAP:.0%}: semantic agreement on the pixels whose fp32 top-2 class "
            f"scores differ by more than {DECIDED_GAP:.0%} of the top one "
            f"({report['rows'][0].get('decided_fraction', float('nan')):.0%} of them; the golden weights are random "
            f"and leave the rest near ties).\n"
            + "".join(f"\nSkipped {c}: {why}\n" for c, why in report.get("skipped", {}).items()))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    labels = [f"{r['backend']}\n{r['precision']}" for r in rows]
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    ax.bar(labels, [r["p50_s"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        if r["goal_s"]:
            ax.hlines(r["goal_s"], i - 0.4, i + 0.4, colors="tab:red", linestyles="--")
        ax.text(i, r["p50_s"], f"{r['p50_s']:.1f}s\nsem {r['semantic_agreement']:.3f}", ha="center", va="bottom",
                fontsize=8)
    ax.set_ylabel("seconds per image (p50)")
    ax.set_title(f"{report['model']}, {report['input']} (red: goal)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
