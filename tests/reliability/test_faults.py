"""Faults while writing: a killed export, a file-size limit, a full disk, a read-only directory.

Each leaves ``--out`` as it was (no result, no temporary), and the command ends with one
``error:`` line. The killed and resource-limited cases run ``python -m cmpf`` in a real process.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import CLASSES, CMPF, ERROR_LINE, assert_one_line_error, cli, cmpf_process_env, tree

from cmpf.io import Staging, torch_save
from cmpf.outputs import FOLDERS

RUN = ["run", "--model", "tiny", "--no-resize", "--classes", CLASSES]


def _last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_kill_9_during_export_leaves_nothing_a_later_run_accepts(tmp_path, inputs, capsys):
    out = tmp_path / "art"
    proc = subprocess.Popen([*CMPF, "export", "--model", "tiny", "--out", str(out), "--no-verify"],
                            env=cmpf_process_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:  # wait until files are being written
            staged = [p for p in tmp_path.glob(".art.cmpf-staging-*/*")]
            if any(p.suffix == ".onnx" for p in staged) or len(staged) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the export ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "manifest.json").exists()
    r = cli(["run", inputs / "a.png", "--artifacts", out, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(r, 2, "cmpf export")
    assert not (tmp_path / "o").exists()
    stale = list(tmp_path.glob(".art.cmpf-staging-*"))
    assert stale, "the killed export had staged files (the test killed it too late or too early)"
    with Staging() as stage:  # the next writer of that directory removes what the dead process left
        stage.directory(out)
    assert not list(tmp_path.glob(".art.cmpf-staging-*"))


def _limit_file_size(nbytes: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return preexec


def test_file_size_limit_midway_leaves_nothing_partial(tmp_path, inputs):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("from before")
    # the semantic PNG (~1 KB) fits, the overlay of a random image (~6 KB) does not
    r = subprocess.run([*CMPF, *RUN, str(inputs / "a.png"), str(inputs / "b.png"), "--out", str(out)],
                       env=cmpf_process_env(), capture_output=True, text=True, preexec_fn=_limit_file_size(4096),
                       timeout=300)
    assert r.returncode == 3, r.stderr[-2000:]
    assert ERROR_LINE.match(_last_line(r.stderr)) and "file-size limit" in _last_line(r.stderr), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and ".tmp" not in _last_line(r.stderr)
    assert tree(tmp_path) == {"o", "o/keep.txt"} and (out / "keep.txt").read_text() == "from before"


def test_torch_save_under_a_file_size_limit_raises_an_os_error_and_leaves_nothing(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(OSError) as e:
            torch_save({"w": torch.zeros(1 << 20)}, tmp_path / "w.pth")  # 4 MB
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert e.value.filename == str(tmp_path / "w.pth")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failing", ["panoptic/b.png", "instances.json"])
def test_disk_full_midway_leaves_no_result(failing, tmp_path, inputs, capsys, monkeypatch):
    """The disk fills on the second image's panoptic PNG, or on the run's last file: nothing remains."""
    import cmpf.outputs

    name = "atomic_write" if failing.endswith(".png") else "write_json"
    real = getattr(cmpf.outputs, name)

    def full(path, *args, **kw):
        if str(path).endswith(failing):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(cmpf.outputs, name, full)
    r = cli([*RUN, inputs / "a.png", inputs / "b.png", "--out", tmp_path / "o", "--dump-tensors",
             tmp_path / "t.npz"], capsys)
    assert_one_line_error(r, 3, "disk is full", str(tmp_path / "o" / failing))
    assert tree(tmp_path) == set()


def _make_read_only(directory: Path) -> None:
    """chmod 555, or for root (whom permissions do not stop) the immutable attribute."""
    if os.geteuid() != 0:
        os.chmod(directory, 0o555)
        return
    r = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"running as root and chattr +i is not available here ({r.stderr.strip()})")


def _make_writable(directory: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(directory)], capture_output=True)
    os.chmod(directory, 0o755)


@pytest.mark.parametrize("command", ["run", "export"])
def test_read_only_output_directory_is_refused_and_stays_empty(command, tmp_path, inputs, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    _make_read_only(out)
    try:
        argv = [*RUN, inputs / "a.png", "--out", out] if command == "run" else \
            ["export", "--model", "tiny", "--graphs", "text_encoder", "--out", out, "--no-verify"]
        r = cli(argv, capsys)
        assert r.code in (2, 3), r.err[-2000:]
        assert ERROR_LINE.match(r.last_line) and "Traceback" not in r.err, r.err[-2000:]
        assert "permission denied" in r.last_line or "not permitted" in r.last_line, r.last_line
        assert list(out.iterdir()) == [] and tree(tmp_path) == {"ro"}
    finally:
        _make_writable(out)


def test_a_failed_run_keeps_the_previous_results(tmp_path, inputs, capsys):
    out = tmp_path / "o"
    assert cli([*RUN, inputs / "a.png", "--out", out], capsys).code == 0
    def files() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    before = files()
    r = cli([*RUN, inputs / "b.png", inputs / "junk.png", "--out", out], capsys)
    assert r.code == 2
    assert files() == before
    assert tree(tmp_path) == {"o", *(f"o/{d}" for d in FOLDERS), *(f"o/{n}" for n in before)}
