"""The ``cmpf`` console script (also ``python -m cmpf``): one module per command, one error policy.

Every command module has ``add(subparsers)`` (its flags) and a ``main(args) -> int``: parse → config
dataclass → library call → print what was written. Library code raises ``cmpf.errors.CmpfError``;
it is caught here, once: the last line on stderr is ``error: <one sentence naming the input and the
fix>`` (an error's ``details``, such as a weight report, come before it) and the exit code comes from
``cmpf.errors.ExitCode``. A warning is one line too, ``warning: <sentence>``. ``--debug`` (or
``CMPF_DEBUG=1``) also prints the traceback, and where each warning came from. Nothing heavy is
imported until a command runs, and only the command that runs is imported at all (``COMMANDS``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from typing import Optional, Sequence

from cmpf import __version__
from cmpf.errors import CmpfError, ExitCode, InputError, describe_os_error

# The command table: name -> (module under cmpf.cli, the line `cmpf --help` shows for it), in listing
# order. A command module is imported and its parser built only when that command runs, so that
# `cmpf --help` and `cmpf <cmd> --help` import no other command (train's flags import the dataset
# registry, and with it torch); tests/unit/test_newcomer.py keeps each line equal to the help text
# its module registers.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "segment images with a checkpoint or exported artifacts"),
    "export": ("export", "export graphs to ONNX / AOTInductor with a manifest"),
    "quantize": ("quantize", "write fp16 / bf16 / int8 ONNX graphs beside an export's fp32 files"),
    "build": ("build", "build TensorRT engines from an artifact directory's ONNX graphs"),
    "demo": ("demo", "train the tiny preset on generated scenes, export it, segment held-out scenes with ONNX "
                     "Runtime, compare with PyTorch"),
    "bench": ("bench", "per-stage latency (p50/p90/p95/p99, mean, std, min), images/s and peak memory of one "
                       "backend, or of every backend x precision of --backend A,B --precision P,Q in one report; "
                       "--compare A.json B.json prints ratios"),
    "parity": ("parity", "reference vs candidates at tensor, image and dataset level; exit 1 when a --fail-on rule "
                         "(or a tolerance-table default) breaks"),
    "eval": ("evaluate", "PQ / mIoU / AP of a model on a benchmark dataset (torchrun for several processes)"),
    "metrics": ("metrics", "PQ / mIoU / AP of saved predictions"),
    "train": ("train", "train on COCO panoptic (official recipe)"),
    "doctor": ("doctor", "print what this machine offers, or lint ONNX files for TensorRT (--onnx)"),
    "serve": ("serve", "serve exported artifacts with Triton Inference Server (model cmpf_segment)"),
    "client": ("client", "segment images on a running `cmpf serve` and write what `cmpf run` writes"),
    "triton-repo": ("triton_repo", "write a Triton Inference Server model repository of an artifact directory"),
}
ALIASES = {"check-env": "doctor"}  # the name STYLE.md used first; `cmpf --help` lists it beside doctor


class _Parser(argparse.ArgumentParser):
    """argparse with the error contract: a bad flag ends stderr with one ``error:`` line too (exit 2)."""

    def error(self, message: str):
        self.exit(int(ExitCode.BAD_INPUT), f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The ``cmpf`` parser. With ``argv``, only the command it names gets its full parser (the rest a summary)."""
    parser = _Parser(prog="cmpf", description="CMPF / FrozenSeg and FC-CLIP deployment toolchain: export, run, "
                                              "compare and time open-vocabulary segmentation models.",
                     epilog="First steps: `make demo` (a model trained here, exported and run, in a few minutes), "
                            "then `cmpf run IMAGES --artifacts DIR --out OUT`. `cmpf COMMAND --help` lists a "
                            "command's options and their defaults.")
    parser.add_argument("--version", action="version", version=f"cmpf {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or CMPF_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _command_in(argv) if argv is not None else None
    for name, (module, summary) in COMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(f"cmpf.cli.{module}").add(sub)
        else:
            sub.add_parser(name, help=summary, aliases=[a for a, n in ALIASES.items() if n == name])
    return parser


def _command_in(argv: Sequence[str]) -> Optional[str]:
    """The command ``argv`` names (the first word that is not an option; cmpf's own options take no value)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return ALIASES.get(word, word)
    return None


def as_cmpf_error(e: BaseException) -> Optional[CmpfError]:
    """The expected error an exception stands for, or None for a bug (which keeps its traceback)."""
    if isinstance(e, CmpfError):
        return e
    if isinstance(e, OSError):
        return describe_os_error(e)
    if isinstance(e, ValueError):  # bad values reported by torch / numpy / library validation
        return InputError(str(e))
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    debug = args.debug or os.environ.get("CMPF_DEBUG", "") not in ("", "0")
    formatwarning = warnings.formatwarning
    if not debug:  # a warning is one line, as an error is; --debug shows where it came from
        warnings.formatwarning = _one_line_warning
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as e:  # noqa: BLE001 (the CLI edge: every expected error ends here)
        error = as_cmpf_error(e)
        if error is None:
            raise
        if debug:
            traceback.print_exc()
        sys.stdout.flush()  # what the command printed comes before the error, never after it
        if getattr(error, "details", None):
            print(error.details, file=sys.stderr)
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return int(error.exit_code)
    finally:
        warnings.formatwarning = formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return "warning: " + " ".join(str(message).split()) + "\n"
