"""The ``cmpf`` console script (also ``python -m cmpf``): one module per command, one error policy.

Every command module has ``add(subparsers)`` (its flags) and a ``main(args) -> int``: parse → config
dataclass → library call → print what was written. Library code raises ``cmpf.errors.CmpfError``;
it is caught here, once: the last line on stderr is ``error: <one sentence naming the input and the
fix>`` (an error's ``details``, such as a weight report, come before it) and the exit code comes from
``cmpf.errors.ExitCode``. ``--debug`` (or ``CMPF_DEBUG=1``) also
prints the traceback. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Optional, Sequence

from cmpf import __version__
from cmpf.cli import bench, demo, doctor, evaluate, export, metrics, parity, quantize, run, train
from cmpf.errors import CmpfError, ExitCode, InputError, describe_os_error

COMMANDS = (run, export, quantize, demo, bench, parity, evaluate, metrics, train, doctor)


class _Parser(argparse.ArgumentParser):
    """argparse with the error contract: a bad flag ends stderr with one ``error:`` line too (exit 2)."""

    def error(self, message: str):
        self.exit(int(ExitCode.BAD_INPUT), f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cmpf", description="CMPF / FrozenSeg and FC-CLIP deployment toolchain")
    parser.add_argument("--version", action="version", version=f"cmpf {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or CMPF_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return parser


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
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("CMPF_DEBUG", "") not in ("", "0")
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
