"""Shared inputs of the reliability suite: small images, weight files, and the CLI run in-process.

Every command is run through ``cmpf.cli.main`` (the one CLI edge) with captured output, so a case
costs no interpreter start; the few cases that need a real process (kill -9, resource limits,
another user) start ``python -m cmpf`` themselves.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CLASSES = "cat;dog,puppy;sky"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def cli(argv, capsys) -> Result:
    """``cmpf ARGV`` in this process: exit code, stdout, stderr."""
    from cmpf.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    cap = capsys.readouterr()
    return Result(int(code), cap.out, cap.err)


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (hidden ones included), relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_one_line_error(r: Result, code: int, *needles: str) -> None:
    assert r.code == code, (r.code, r.err[-2000:])
    assert r.last_line.startswith("error: "), r.err[-2000:]
    assert "Traceback" not in r.err, r.err[-2000:]
    for needle in needles:
        assert needle in r.last_line, (needle, r.last_line)


def save_png(path: Path, array: np.ndarray, **kw) -> Path:
    Image.fromarray(array).save(path, **kw)
    return path


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width``×``height`` with almost no pixel data (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Path:
    """Input files shared by every case (never written to by a command)."""
    d = tmp_path_factory.mktemp("inputs")
    save_png(d / "a.png", random_image(40, 48, 0))
    save_png(d / "b.png", random_image(40, 48, 1))
    (d / "junk.png").write_bytes(os.urandom(300))
    full = (d / "a.png").read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    (d / "empty.png").write_bytes(b"")
    png_header_only(d / "bomb.png", 30000, 30000)
    save_png(d / "thin.png", random_image(5, 1000))
    save_png(d / "dot.png", random_image(2, 2))
    (d / "vocab.txt").write_text("cat\ndog,puppy\nsky\n")
    (d / "checkpoint_junk.pth").write_bytes(os.urandom(1000))
    return d


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Weight files: the tiny model's, another preset's, wrong shapes, and a pickle that runs code."""
    from cmpf.model import build_model

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    tiny = build_model("tiny").state_dict()
    torch.save({"model": tiny}, d / "tiny.pth")
    torch.save({"model": build_model("tiny-fcclip").state_dict()}, d / "fcclip.pth")
    key = next(k for k, v in tiny.items() if k.startswith("sem_seg_head.") and v.ndim == 2)
    torch.save({"model": {**tiny, key: torch.zeros(3, 3)}}, d / "wrong_shape.pth")
    marker = d / "code_ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Evil()}, d / "evil.pth")
    return {"tiny": d / "tiny.pth", "fcclip": d / "fcclip.pth", "wrong_shape": d / "wrong_shape.pth",
            "evil": d / "evil.pth", "marker": marker}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The tiny preset exported to ONNX (shared with the other suites through ``tests/exported.py``)."""
    from exported import tiny_export

    return tiny_export()


def cmpf_process_env(**extra) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CMPF_DEBUG": "0", **extra}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


CMPF = [sys.executable, "-m", "cmpf"]
ERROR_LINE = re.compile(r"^error: \S")
