"""``quantize_artifacts`` (``cmpf quantize``): fp32 graphs of an artifact directory → fp16 or int8.

Order: read and check everything (manifest, plan, calibration folder, tools) → capture the
calibration feeds with the fp32 pipeline on ONNX Runtime → per graph: write
``<graph>.<precision>.onnx`` (fp16, bf16: casts; int8: Q/DQ), run it once against the fp32 file
on a captured input (ONNX Runtime; bf16 on OpenVINO, as ONNX Runtime's CPU provider has no bf16
kernels) → the manifest with the new variants and their recipes. Files
are staged beside the directory and moved in together, ``manifest.json`` last, so a failure
leaves the directory as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from cmpf.errors import InputError, require
from cmpf.io import Staging, sha256_file
from cmpf.manifest import MANIFEST_NAME, GraphFile, Manifest, parse_precision, variant_key
from cmpf.precision import bf16, fp16, qdq
from cmpf.sample import SAMPLE_IMAGE
from cmpf.precision.calibration import MIN_IMAGES, CalibrationSet, calibration_set, capture_feeds
from cmpf.tolerances import rel_error
from cmpf.text import TextClassifier
from cmpf.vocabulary import Vocabulary

QUANTIZERS = ("fp16", "bf16", "int8")
# fp8 is not offered: ONNX Runtime 1.30's quantiser moves float8 Q/DQ pairs around Transposes, which
# its own CPU provider then refuses to load (and it takes only the Distribution calibrator)
NOT_OFFERED = {"fp8": "ONNX Runtime 1.30's quantiser writes fp8 graphs its CPU provider cannot load (Transpose "
                      "on float8), so they could not be checked here"}
# ONNX Runtime 1.30's ORT_ENABLE_ALL level crashes (SIGSEGV) creating a session of the fp16 text encoder;
# ORT_ENABLE_LAYOUT (every level below it) runs it. Recorded per file, read by the onnxruntime runner.
ORT_OPTIMIZATION = {"fp16": "layout"}
CALIBRATED = ("int8",)


@dataclass(frozen=True)
class QuantizeConfig:
    """What ``cmpf quantize`` makes (see ``cmpf quantize --help``)."""

    artifacts: str
    precision: str  # 'int8' (every graph) or 'sam_image_encoder=int8,decoder=fp16'
    calib_images: Optional[str] = None
    calib_limit: Optional[int] = None
    calib_min: int = MIN_IMAGES
    method: str = qdq.DEFAULT_METHOD
    exclude: tuple[str, ...] = ()  # more node names kept out of Q/DQ / kept fp32
    quantize_heads: bool = False  # also quantise the output heads (excluded by default)
    reduce_range: bool = False  # int8 weights in 7 bits (qdq.quantize): for x86 CPUs without VNNI
    vocabulary: Optional[Vocabulary] = None  # calibration vocabulary (default: the manifest's)
    text: Optional[TextClassifier] = None  # its text classifier where the caller has it (not encoded again)

    def __post_init__(self) -> None:
        if self.method not in qdq.METHODS:
            raise InputError(f"unknown calibration method {self.method!r}; choose one of {', '.join(qdq.METHODS)}")

    def command(self, plan: dict[str, str]) -> str:
        args = ["cmpf", "quantize", "--artifacts", self.artifacts, "--precision",
                ",".join(f"{g}={p}" for g, p in plan.items() if p != "fp32")]
        if any(p in CALIBRATED for p in plan.values()):
            args += ["--calib-images", str(self.calib_images), "--calib-method", self.method]
            args += ["--reduce-range"] if self.reduce_range else []
        return " ".join(args)


def quantize_artifacts(cfg: QuantizeConfig, progress: bool = True) -> Path:
    """Write the reduced-precision files of ``cfg.artifacts`` and record them; returns the directory."""
    require("onnx", "precision", "cmpf quantize")
    require("onnxruntime", "precision", "cmpf quantize")
    directory = Path(cfg.artifacts)
    manifest = Manifest.read(directory)
    plan = parse_precision(cfg.precision, manifest.graphs)
    targets = {g: p for g, p in plan.items() if p != "fp32"}
    if not targets:
        raise InputError(f"--precision {cfg.precision}: nothing to do (fp32 is what `cmpf export` wrote)")
    unsupported = sorted({p for p in targets.values() if p not in QUANTIZERS})
    if unsupported:
        why = "; ".join(f"{p}: {NOT_OFFERED[p]}" for p in unsupported if p in NOT_OFFERED)
        raise InputError(f"--precision {', '.join(unsupported)}: cmpf quantize writes {', '.join(QUANTIZERS)} graphs"
                         + (f" ({why})" if why else ""))
    sources = {g: manifest.artifact(g, "onnx") for g in targets}  # verified fp32 files
    calibrated = {g for g, p in targets.items() if p in CALIBRATED}
    if cfg.text is not None and "text_encoder" in calibrated:
        raise InputError(f"--precision text_encoder={targets['text_encoder']} is calibrated on the vocabulary's "
                         f"prompts, which a given text classifier skips; keep text_encoder fp32 or encode the prompts")
    if calibrated or cfg.calib_images:
        images = calibration_set(cfg.calib_images, cfg.calib_limit, cfg.calib_min)
    else:  # fp16 needs no calibration: its check runs on the bundled sample image
        sample = Path(str(SAMPLE_IMAGE))
        images = CalibrationSet((sample,), sha256_file(sample))
    feeds = _capture(manifest, images, set(targets), cfg, progress)

    added, hashes = {}, {}
    with Staging(last=(MANIFEST_NAME,)) as staging:
        staged = staging.directory(directory, "--artifacts")
        bar = tqdm(targets.items(), desc="quantize", unit="graph", disable=not progress)
        for graph, precision in bar:
            bar.set_postfix_str(f"{graph}: {precision}")
            source = sources[graph]
            name = f"{graph}.{precision}.onnx"
            recipe = _write(source, staged / name, precision, feeds.get(graph), cfg, images)
            file = GraphFile(name, precision, "any", recipe=recipe)
            added[graph] = {variant_key("onnx", precision): file}
            hashes[name] = sha256_file(staged / name)
        updated = manifest.with_files(added, hashes)
        updated.write(staged)
    logging.getLogger("cmpf").info("quantized %s: %s", directory, cfg.command(plan))
    return directory


def _capture(manifest: Manifest, images: CalibrationSet, graphs: set[str], cfg: QuantizeConfig,
             progress: bool) -> dict[str, list[dict[str, np.ndarray]]]:
    from cmpf.predictor import ModelSource, load_predictor

    predictor = load_predictor(ModelSource(artifacts=str(manifest.directory)), "onnxruntime")
    vocabulary = predictor.resolve_vocabulary(cfg.vocabulary)
    options = predictor.options
    if "sam_mask_decoder" in graphs and not options.sam_ensemble:
        options = dataclasses.replace(options, sam_ensemble=True)  # the only path that runs that graph
    return capture_feeds(predictor.runners, images, vocabulary, predictor.cfg, options, graphs, progress=progress,
                         text=cfg.text)


def _write(source, dst: Path, precision: str, feeds, cfg: QuantizeConfig, images: Optional[CalibrationSet]) -> dict:
    import onnx
    import onnxruntime

    src = source.path
    recipe = {"source": src.name, "source_sha256": source.manifest.files[src.name]}
    if precision in ("fp16", "bf16"):
        keep = fp16.keep_ops(source.graph.name)
        model = (fp16.to_fp16 if precision == "fp16" else bf16.to_bf16)(onnx.load(str(src)), keep, cfg.exclude)
        onnx.save(model, str(dst))
        tool = f"onnxruntime.transformers.float16 {onnxruntime.__version__}"
        recipe.update(tool=tool if precision == "fp16" else f"cmpf.precision.bf16 over {tool}", keep_fp32_ops=list(keep),
                      kept_fp32_nodes=len(fp16.kept_nodes(model, keep)) + len(cfg.exclude),
                      keep_fp32_node_names=list(cfg.exclude), interface="fp32 inputs and outputs")
    else:
        heads = [] if cfg.quantize_heads else qdq.output_heads(onnx.load(str(src), load_external_data=False))
        with tempfile.TemporaryDirectory() as tmp:  # the pre-processed copy and the quantiser's scratch files
            settings = qdq.quantize(_preprocessed(src, Path(tmp)), dst, feeds, precision, cfg.method,
                                    sorted(set(heads) | set(cfg.exclude)), reduce_range=cfg.reduce_range)
        recipe.update(tool=f"onnxruntime.quantization {onnxruntime.__version__}", **settings,
                      calibration={**images.to_json(), "feeds": len(feeds)},
                      qdq=qdq.qdq_facts(onnx.load(str(dst))))
    if precision in ORT_OPTIMIZATION:
        recipe["onnxruntime_optimization"] = ORT_OPTIMIZATION[precision]
    recipe["check_rel_error"], recipe["check_runtime"] = _check(src, dst, feeds, source.graph, precision)
    return recipe


def _preprocessed(src: Path, tmp: Path) -> Path:
    """ONNX Runtime's recommended pre-processing (shape inference, constant folding) before quantisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = tmp / src.name
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    except Exception as e:  # noqa: BLE001 - optional: quantise the graph as exported
        logging.getLogger("cmpf").warning("quantization pre-processing of %s skipped (%s)", src.name, e)
        return src
    return out


def _check(src: Path, dst: Path, feeds, graph, precision: str) -> tuple[dict[str, float], str]:
    """Run both files on the first captured input and compare the outputs (L2-relative error); returns the
    errors and the runtime that ran the new file."""
    import onnxruntime as ort

    feed = feeds[0]
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feed)
    if precision == "bf16":
        got, runtime = _run_openvino(dst, graph, feed)
    else:
        options = ort.SessionOptions()
        if precision in ORT_OPTIMIZATION:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT
        got = ort.InferenceSession(str(dst), options, providers=["CPUExecutionProvider"]).run(None, feed)
        runtime = f"onnxruntime {ort.__version__} CPU"
    names = [t.name for t in graph.outputs]
    return {n: float(rel_error(np.asarray(g, dtype=np.float64), np.asarray(r, dtype=np.float64)))
            for n, g, r in zip(names, got, ref) if np.asarray(r).dtype.kind == "f"}, runtime


def _run_openvino(path: Path, graph, feed: dict[str, np.ndarray]) -> tuple[list[np.ndarray], str]:
    """A bf16 file's outputs on OpenVINO: bf16 kernels where the CPU has them, else fp32 compute on the
    bf16-rounded weights (the file's types still checked by the ONNX frontend)."""
    import openvino
    import torch

    from cmpf.errors import EnvironmentProblem
    from cmpf.runtime.openvino_runner import OpenVinoRunner

    require("openvino", "openvino", "checking bf16 files (ONNX Runtime's CPU provider has no bf16 kernels)")
    try:
        runner = OpenVinoRunner(path, graph, inference_precision="bf16")
    except EnvironmentProblem:  # no bf16 kernels on this CPU
        runner = OpenVinoRunner(path, graph)
    try:
        out = runner({k: torch.from_numpy(v) for k, v in feed.items()})
        return ([out[t.name].numpy() for t in graph.outputs],
                f"openvino {openvino.__version__} CPU, {runner.inference_precision} compute")
    finally:
        runner.close()

