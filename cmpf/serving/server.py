"""Start and stop a Triton Inference Server that serves ``cmpf_segment``: ``ServeConfig`` → a running server.

``TritonServer`` writes the model repository into a private workspace, starts the ``tritonserver``
binary that the ``nvidia-pytriton`` wheel bundles (with its Python backend and the backend stub
built for this interpreter's minor version), waits for ``/v2/health/ready`` and, on ``stop``,
terminates the server's whole process group (the stubs included) and removes the workspace. The
two environment settings the stub needs (``cmpf.serving``'s docstring says why) are given to that
process only: this interpreter's ``libpython`` first on ``LD_LIBRARY_PATH``, and this environment's
``bin`` first on ``PATH`` so that the stub runs in this environment (where cmpf is installed).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from cmpf.errors import EnvironmentProblem, require
from cmpf.serving.repository import ServeConfig, write_segment_model


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on localhost now (for a server's HTTP, gRPC and metrics endpoints)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def triton_install() -> Path:
    """The ``tritonserver`` directory of the installed ``nvidia-pytriton`` wheel (bin/, backends/, stubs)."""
    pytriton = require("pytriton", "serve", "cmpf serve")
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise EnvironmentProblem(f"{root}: the nvidia-pytriton wheel has no tritonserver binary; reinstall it "
                                 f"(pip install -c constraints.txt 'cmpf[serve]')")
    return root


def _stub(root: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").iterdir())
        raise EnvironmentProblem(f"nvidia-pytriton has no Python backend stub for Python {version} (it has "
                                 f"{', '.join(have)}); run cmpf with one of those interpreters")
    return stub


def server_env() -> dict[str, str]:
    """The environment of the server process (see the module docstring)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not (Path(libdir) / soname).is_file():
        raise EnvironmentProblem(f"{sys.executable} has no shared libpython in {libdir}; the Triton Python backend "
                                 f"stub needs this interpreter's own (another release's breaks it, pytriton issue "
                                 f"#51): use a Python built with --enable-shared (pyenv: "
                                 f"PYTHON_CONFIGURE_OPTS=--enable-shared)")
    libs = Path(triton_install()).parent.parent / "nvidia_pytriton.libs"
    paths = [libdir, str(libs)] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])
    env["LD_LIBRARY_PATH"] = ":".join(paths)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


class TritonServer:
    """A ``tritonserver`` process serving ``cmpf_segment``; a context manager (``start`` / ``stop``)."""

    def __init__(self, cfg: ServeConfig, repository: Optional[str | Path] = None):
        """``repository``: serve this model repository (``cmpf triton-repo``) instead of writing one for ``cfg``
        (whose ports, limits and timeout still apply)."""
        self.cfg, self.repository = cfg, repository
        self.workspace: Optional[Path] = None
        self.process: Optional[subprocess.Popen] = None

    @property
    def http_url(self) -> str:
        return f"localhost:{self.cfg.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.cfg.grpc_port}"

    @property
    def log(self) -> Path:
        assert self.workspace is not None
        return self.workspace / "tritonserver.log"

    def start(self) -> "TritonServer":
        root = triton_install()
        self.workspace = Path(tempfile.mkdtemp(prefix="cmpf-serve-"))
        backends = self.workspace / "backends" / "python"
        backends.mkdir(parents=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            (backends / name).symlink_to(root / "backends" / "python" / name)
        shutil.copy(_stub(root), backends / "triton_python_backend_stub")
        models = Path(self.repository).resolve() if self.repository else self.workspace / "models"
        if not self.repository:
            write_segment_model(models, self.cfg)
        cfg = self.cfg
        command = [str(root / "bin" / "tritonserver"), f"--model-repository={models}",
                   f"--backend-directory={self.workspace / 'backends'}", f"--http-port={cfg.http_port}",
                   f"--grpc-port={cfg.grpc_port}", f"--metrics-port={cfg.metrics_port}",
                   "--exit-timeout-secs=10", "--strict-readiness=true"]
        with open(self.log, "wb") as log:
            # a process group of its own: stop() ends the server and its backend stubs together
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=server_env(),
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EnvironmentProblem(f"Triton Inference Server exited with code {self.process.returncode} "
                                         f"while starting: {self._last_error()}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise EnvironmentProblem(f"Triton Inference Server was not ready after {self.cfg.startup_timeout_s:.0f} s: "
                                 f"{self._last_error()}")

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _last_error(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.is_file() else []
        errors = [line for line in lines if line.startswith("E") or "Error" in line] or lines or ["(no log)"]
        return " ".join(errors[-1].split())[:500] + " (the server's log said so last)"

    def wait(self) -> int:
        """Block until the server exits (or this process is interrupted)."""
        assert self.process is not None
        return self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        if self.process is not None:
            try:  # backend stubs that outlived the server
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(cfg: ServeConfig, announce=print) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM); returns the server's exit code (0 after a stop)."""
    server = TritonServer(cfg)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        server.start()
        announce(f"serving {cfg.artifacts} ({cfg.backend}) as model cmpf_segment: HTTP {server.http_url}, "
                 f"gRPC {server.grpc_url}, metrics localhost:{cfg.metrics_port}/metrics; Ctrl-C stops")
        code = server.wait()
        if code != 0:
            raise EnvironmentProblem(f"Triton Inference Server exited with code {code}: {server._last_error()}")
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
