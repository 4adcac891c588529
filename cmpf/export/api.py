"""``export_model``: preset + checkpoint → artifact directory (one file per graph and format + manifest).

Stages, in order, under one progress bar: build the model (and save random weights when there is
no checkpoint) → per graph: ``torch.export`` once, then ONNX and/or AOTInductor from that program
(→ optional ONNX Runtime check against the eager graph) → ``manifest.json``. Every file is staged
in a temporary directory beside ``--out`` (``cmpf.io.Staging``) and moved into place only when the
whole export succeeded, the manifest last: a failed or killed export leaves ``--out`` as it was
(a killed one may leave a hidden staging directory, removed by the next export there).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from cmpf.config import default_options, get_config
from cmpf.errors import CheckFailed, InputError
from cmpf.export.aoti import export_aoti, program_device
from cmpf.export.manifest import build_manifest
from cmpf.export.onnx import DEFAULT_OPSET, export_onnx
from cmpf.export.program import TraceSizes, example_inputs, export_program
from cmpf.io import Staging, check_output_dir, sha256_file, torch_save
from cmpf.manifest import FORMAT_SUFFIX, MANIFEST_NAME, GraphFile, WeightsRecord
from cmpf.model.graphs import call_graph, graph_module, model_specs
from cmpf.tolerances import rel_error
from cmpf.vocabulary import load_vocabulary, load_vocabulary_file

FORMATS = ("onnx", "aoti")
PRECISION = "fp32"
WEIGHTS_NAME = "weights.pth"
# ≠ the trace sizes
VERIFY_SIZES = TraceSizes(batch=3, h32=3, w32=6, num_classes=5, num_synonyms=3, num_prompts=4, num_points=5)
VERIFY_REL_ERROR = 1e-3  # a sanity bound at export time; the parity tests hold the 1e-4 table


@dataclass(frozen=True)
class ExportConfig:
    model: str  # preset name (cmpf.config.PRESETS)
    out_dir: str
    checkpoint: Optional[str] = None  # None: random weights, saved as weights.pth beside the graphs
    formats: tuple[str, ...] = ("onnx",)
    graphs: Optional[tuple[str, ...]] = None  # None: every graph of the model
    opset: int = DEFAULT_OPSET
    external_data: bool = False  # ONNX weights in <file>.data even under 2 GB (always above it)
    device: str = "cpu"  # AOTInductor compiles for this device; ONNX is device-independent
    vocab: Optional[str] = None  # vocabulary file recorded in the manifest
    classes: Optional[str] = None  # or an inline vocabulary 'cat;dog,puppy'
    things: Optional[str] = None  # thing classes of that vocabulary ('cat;dog' or an official split name)
    train_vocab: Optional[str] = None  # training vocabulary: its synonyms are the seen classes
    trace: TraceSizes = TraceSizes()
    verify: bool = True  # run each ONNX file once on ONNX Runtime and compare with the eager graph
    plugins: tuple[str, ...] = ()  # kernels written as TensorRT plugin nodes (cmpf.engines.plugin_export)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise InputError(f"unknown export formats {unknown}; choose from {', '.join(FORMATS)}")
        if self.opset < 18:
            raise InputError(f"ONNX opset {self.opset} is too old; use >= 18")
        if self.vocab and self.classes:
            raise InputError("give at most one of --vocab FILE and --classes LIST")
        if self.plugins:
            from cmpf.engines.plugin_export import plugin_names

            plugin_names(self.plugins)
            if tuple(self.formats) != ("onnx",):
                raise InputError(f"--plugins writes TensorRT plugin nodes into ONNX files; export --format onnx "
                                 f"alone (this export: {','.join(self.formats)})")

    def command(self) -> str:
        """The command line that reproduces this export (recorded in the manifest)."""
        args = ["cmpf", "export", "--model", self.model, "--out", self.out_dir, "--format", ",".join(self.formats)]
        for flag, value in (("--checkpoint", self.checkpoint), ("--vocab", self.vocab), ("--classes", self.classes),
                            ("--things", self.things), ("--train-vocab", self.train_vocab)):
            if value:
                args += [flag, value]
        if self.graphs:
            args += ["--graphs", ",".join(self.graphs)]
        if self.device != "cpu":
            args += ["--device", self.device]
        if self.plugins:
            args += ["--plugins", ",".join(self.plugins)]
        return shlex.join(args)


def export_model(cfg: ExportConfig, model=None, progress: bool = True) -> Path:
    """Export the graphs of ``cfg.model``; returns the manifest path.

    Args:
        model: an already built ``CMPF`` of the same preset (skips building; its weights are saved
            when ``cfg.checkpoint`` is None).
    """
    from cmpf.model import build_model

    out = check_output_dir(cfg.out_dir, "--out")
    vocabulary = load_vocabulary(cfg.vocab, cfg.classes, cfg.things, required=False)
    options = default_options(get_config(cfg.model))
    if cfg.train_vocab:
        options = options.with_seen(load_vocabulary_file(cfg.train_vocab).classes)
    model = (model or build_model(cfg.model, cfg.checkpoint)).eval().to(cfg.device)
    recorded = model.cfg
    if cfg.plugins:  # trace with the Triton kernels, whose ops become the plugin nodes
        model, recorded = _with_plugins(model, cfg.plugins)
    specs = model_specs(model)
    graphs = list(cfg.graphs or specs)
    missing = sorted(set(graphs) - set(specs))
    if missing:
        raise InputError(f"model {cfg.model} has no graphs {missing}; graphs: {', '.join(specs)}")
    # one trace per format: the ONNX exporter consumes the exported program it is given (sam_mask_decoder's
    # data-dependent sizes then fail AOTInductor's compile with PendingUnbackedSymbolNotFound)
    stages = [(g, step) for g in graphs for fmt in cfg.formats for step in ("trace", fmt)]
    bar = tqdm(total=len(stages) + 2, desc=f"export {cfg.model}", unit="stage", disable=not progress)
    with Staging(last=(MANIFEST_NAME,)) as stage:  # files reach --out together, the manifest last
        staged = stage.directory(out, "--out")
        bar.set_postfix_str("weights")
        weights = _record_weights(cfg, model, staged, out)
        bar.update()
        files: dict[str, dict[str, GraphFile]] = {}
        program = None
        for graph, step in stages:
            bar.set_postfix_str(f"{graph}: {step}")
            if step == "trace":
                program = _trace(model, graph, specs[graph], cfg)
            else:
                files.setdefault(graph, {})[step] = _write_format(program, model, graph, specs[graph], step, staged,
                                                                  cfg)
            bar.update()
        bar.set_postfix_str("manifest")
        spec_args = {"channels": model.backbone.channels, "embed_dim": model.backbone.embed_dim}
        manifest = build_manifest(recorded, options, {g: specs[g] for g in graphs}, spec_args, files, staged,
                                  command=cfg.command(), opset=cfg.opset if "onnx" in cfg.formats else None,
                                  weights=weights, vocabulary=vocabulary)
        manifest.write(staged)
        (out / MANIFEST_NAME).unlink(missing_ok=True)  # the old manifest would vouch for files about to change
    bar.update()
    bar.close()
    return out / MANIFEST_NAME


def _with_plugins(model, plugins):
    """(the model with the plugged kernels' Triton paths and the same weights, the config to record: the model's
    own, so that the torch backend rebuilds a model that runs where it did)."""
    from cmpf.engines.plugin_export import check_traceable, plugin_model_config
    from cmpf.model import build_model

    check_traceable(plugins)
    traced = build_model(plugin_model_config(model.cfg, plugins)).eval().to(next(model.parameters()).device)
    traced.load_state_dict(model.state_dict())
    return traced, model.cfg


def _record_weights(cfg: ExportConfig, model, out: Path, final: Path) -> WeightsRecord:
    """The weights the graphs come from: the checkpoint's path and hash, or random weights saved here."""
    if cfg.checkpoint:
        path = Path(cfg.checkpoint).resolve()
        return WeightsRecord(str(path), sha256_file(path))
    warnings.warn(f"no --checkpoint: exporting {cfg.model} with random weights (saved as {final / WEIGHTS_NAME})",
                  stacklevel=3)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch_save({"model": state}, out / WEIGHTS_NAME)
    return WeightsRecord(WEIGHTS_NAME, sha256_file(out / WEIGHTS_NAME), random_init=True)


def _trace(model, graph: str, spec, cfg: ExportConfig):
    module = graph_module(model, graph)
    inputs = example_inputs(spec, cfg.trace, cfg.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notes on upstream code (open_clip, timm)
        return export_program(module, spec, inputs)


def _write_format(program, model, graph: str, spec, fmt: str, out: Path, cfg: ExportConfig) -> GraphFile:
    path = out / f"{graph}.{PRECISION}{FORMAT_SUFFIX[fmt]}"
    if fmt == "onnx":
        table = None
        if cfg.plugins:
            from cmpf.engines.plugin_export import translation_table

            table = translation_table(cfg.plugins)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet("onnxscript"):
            warnings.simplefilter("ignore")  # the exporter's progress prints and optimizer notes
            written = export_onnx(program, spec, path, opset=cfg.opset, external_data=cfg.external_data,
                                  custom_translation_table=table)
        plugins = _plugin_nodes(path) if cfg.plugins else []
        # ONNX Runtime cannot run TensorRT plugin nodes: such files are checked by TensorRT's build
        verified = _verify_onnx(path, model, graph, spec) if cfg.verify and not plugins else None
        recipe = {"tensorrt_plugins": sorted(set(plugins))} if plugins else None
        return GraphFile(path.name, PRECISION, "any", tuple(p.name for p in written[1:]), verified, recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes from inductor internals
        export_aoti(program, path)
    return GraphFile(path.name, PRECISION, program_device(program))


def _plugin_nodes(path: Path) -> list[str]:
    import onnx  # noqa: PLC0415

    from cmpf.engines.plugin_export import plugin_nodes

    return plugin_nodes(onnx.load(str(path), load_external_data=False))


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _verify_onnx(path: Path, model, graph: str, spec) -> dict[str, float]:
    """Run the new file once at sizes other than the trace sizes; refuse it beyond ``VERIFY_REL_ERROR``."""
    from cmpf.runtime.onnxruntime_runner import OnnxRuntimeRunner

    inputs = example_inputs(spec, VERIFY_SIZES, "cpu", seed=1)
    device = next(model.parameters()).device
    expected = call_graph(graph_module(model, graph), spec, {k: v.to(device) for k, v in inputs.items()})
    actual = OnnxRuntimeRunner(path, spec)(inputs)
    errors = {}
    for name, ref in expected.items():
        errors[name] = rel_error(actual[name], ref)
        if not errors[name] <= VERIFY_REL_ERROR:  # also catches NaN
            path.unlink()
            raise CheckFailed(f"{path.name}: {name} differs from the eager graph by {errors[name]:.2e} (relative) "
                               f"at sizes {VERIFY_SIZES}; the file was removed")
    return errors
