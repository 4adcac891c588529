"""``export_fusioner``: a Fusioner preset + checkpoint → artifact directory (one file per graph and format + manifest).

The same stages, files and manifest format as CMPF's ``cmpf.export.api.export_model``, reusing its
functions: build the model (random weights saved as ``weights.pth`` when there is no checkpoint; a
separate CLIP file, ``clip_weights``, loaded with the checkpoint as ``cmpf run`` loads it and recorded in
the manifest, path and sha256, and in its command) → per graph ``torch.export`` once
(``cmpf.export.program``; ``batch`` and ``num_classes`` dynamic, the 224 window static) → ONNX
(``cmpf.export.onnx``, then one ONNX Runtime run against the eager graph at batch 1 / K 1, the per-class
sizes) and/or AOTInductor (``cmpf.export.aoti``) → ``manifest.json``
(``cmpf.fusioner.manifest``, ``"family": "fusioner"``). Everything is staged beside ``--out`` and moved
in together, the manifest last.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import warnings
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from cmpf.errors import CheckFailed, InputError
from cmpf.export.aoti import export_aoti, program_device
from cmpf.export.api import PRECISION, ExportConfig, _quiet, _record_weights
from cmpf.export.manifest import producer_versions
from cmpf.export.onnx import export_onnx
from cmpf.export.program import export_program
from cmpf.fusioner import build_model
from cmpf.fusioner.config import SegmentOptions
from cmpf.fusioner.graphs import call_graph, example_inputs, graph_module, graph_specs
from cmpf.fusioner.inference import class_names_of
from cmpf.fusioner.manifest import FusionerManifest
from cmpf.io import Staging, check_output_dir, sha256_file
from cmpf.manifest import FORMAT_SUFFIX, MANIFEST_NAME, GraphEntry, GraphFile, WeightsRecord
from cmpf.tolerances import rel_error
from cmpf.vocabulary import load_vocabulary

VERIFY_SIZES = {"batch": 1, "num_classes": 1, "seed": 1, "class_name": "dog"}  # ≠ the trace sizes (2, 3, "cat")
VERIFY_REL_ERROR = 1e-3  # a sanity bound at export time; the parity tests hold the 1e-4 table


def export_fusioner(cfg: ExportConfig, model=None, options: SegmentOptions = SegmentOptions(),
                    progress: bool = True, clip_weights: Optional[str] = None) -> Path:
    """Export the graphs of the Fusioner preset ``cfg.model``; returns the manifest path.

    Args:
        model: an already built ``Fusioner`` of that preset (its weights are saved when ``cfg.checkpoint``
            is None).
        options: the inference options recorded as the runs' defaults (mode, normalisation, window).
        clip_weights: OpenAI / open_clip CLIP weights for the towers, when ``cfg.checkpoint`` lacks them.
    """
    unsupported = [flag for flag, given in (("--things", cfg.things), ("--train-vocab", cfg.train_vocab),
                                            ("--plugins", cfg.plugins)) if given]
    if unsupported:
        raise InputError(f"{', '.join(unsupported)}: CMPF / FC-CLIP options; a Fusioner export ({cfg.model}) takes "
                         f"--classes / --vocab (one name per class) only")
    out = check_output_dir(cfg.out_dir, "--out")
    vocabulary = load_vocabulary(cfg.vocab, cfg.classes, None, required=False)
    if vocabulary is not None:
        class_names_of(vocabulary)  # one name per class, each prompt within 77 tokens
    if clip_weights is not None and model is None and cfg.checkpoint is None:
        raise InputError(f"--clip-weights {clip_weights} holds the CLIP towers only; give --checkpoint CKPT (the "
                         f"fusion and decoder) as well, or neither for random weights")
    model = (model or build_model(cfg.model, cfg.checkpoint, clip_weights)).eval().to(cfg.device)
    clip_record = WeightsRecord(str(Path(clip_weights).resolve()), sha256_file(clip_weights)) if clip_weights else None
    specs = graph_specs(model.cfg)
    graphs = list(cfg.graphs or specs)
    missing = sorted(set(graphs) - set(specs))
    if missing:
        raise InputError(f"model {cfg.model} has no graphs {missing}; graphs: {', '.join(specs)}")
    bar = tqdm(total=len(graphs) * (1 + len(cfg.formats)) + 2, desc=f"export {cfg.model}", unit="stage",
               disable=not progress)
    with Staging(last=(MANIFEST_NAME,)) as stage:
        staged = stage.directory(out, "--out")
        bar.set_postfix_str("weights")
        weights = _record_weights(cfg, model, staged, out)
        bar.update()
        files: dict[str, dict[str, GraphFile]] = {}
        for graph in graphs:
            bar.set_postfix_str(f"{graph}: trace")
            module = graph_module(model, graph)
            inputs = {k: v.to(cfg.device) for k, v in example_inputs(specs[graph]).items()}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.export's notes on open_clip code
                program = export_program(module, specs[graph], inputs)
            bar.update()
            for fmt in cfg.formats:
                bar.set_postfix_str(f"{graph}: {fmt}")
                files.setdefault(graph, {})[fmt] = _write_format(program, model, graph, fmt, staged, cfg)
                bar.update()
        bar.set_postfix_str("manifest")
        names = sorted({f.path for per in files.values() for f in per.values()}
                       | {x for per in files.values() for f in per.values() for x in f.external_data}
                       | ({weights.path} if not Path(weights.path).is_absolute() else set()))
        manifest = FusionerManifest(
            model=model.cfg, inference=options, graphs={g: GraphEntry(specs[g], files.get(g, {})) for g in graphs},
            spec_args={}, files={n: sha256_file(staged / n) for n in names}, producer=producer_versions(),
            command=cfg.command() + (" " + shlex.join(["--clip-weights", clip_weights]) if clip_weights else ""),
            opset=cfg.opset if "onnx" in cfg.formats else None, vocabulary=vocabulary, weights=weights,
            clip_weights=clip_record)
        manifest.write(staged)
        (out / MANIFEST_NAME).unlink(missing_ok=True)  # the old manifest would vouch for files about to change
    bar.update()
    bar.close()
    return out / MANIFEST_NAME


def _write_format(program, model, graph: str, fmt: str, out: Path, cfg: ExportConfig) -> GraphFile:
    spec = graph_specs(model.cfg)[graph]
    path = out / f"{graph}.{PRECISION}{FORMAT_SUFFIX[fmt]}"
    if fmt == "onnx":
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet("onnxscript"):
            warnings.simplefilter("ignore")  # the exporter's progress prints and optimizer notes
            written = export_onnx(program, spec, path, opset=cfg.opset, external_data=cfg.external_data)
        verified = _verify_onnx(path, model, graph) if cfg.verify else None
        return GraphFile(path.name, PRECISION, "any", tuple(p.name for p in written[1:]), verified)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes from inductor internals
        export_aoti(program, path)
    return GraphFile(path.name, PRECISION, program_device(program))


def _verify_onnx(path: Path, model, graph: str) -> Optional[dict[str, float]]:
    """Run the new file once at ``VERIFY_SIZES``; refuse it (removed) beyond ``VERIFY_REL_ERROR``."""
    from cmpf.runtime.onnxruntime_runner import OnnxRuntimeRunner

    spec = graph_specs(model.cfg)[graph]
    inputs = example_inputs(spec, **VERIFY_SIZES)
    device = next(model.parameters()).device
    expected = call_graph(graph_module(model, graph), spec, {k: v.to(device) for k, v in inputs.items()})
    actual = OnnxRuntimeRunner(path, spec)(inputs)
    errors = {}
    for name, ref in expected.items():
        errors[name] = rel_error(actual[name], ref.cpu())
        if not errors[name] <= VERIFY_REL_ERROR:  # also catches NaN
            path.unlink()
            raise CheckFailed(f"{path.name}: {name} differs from the eager graph by {errors[name]:.2e} (relative) "
                              f"at {VERIFY_SIZES}; the file was removed")
    return errors
