"""Run the ``tritonserver`` bundled in the nvidia-pytriton wheel over a repository (the [serve] extra).

The wheel ships the server binary, its libraries and the python backend with a stub per Python
version, but no onnxruntime backend: the repository served holds only the python-backend model
``dga``. The backend directory is assembled in a temporary folder (the python backend plus the stub
for this interpreter's version); the venv's ``bin`` goes first on PATH so that the stub's embedded
Python finds this environment's packages (dga included), and the interpreter's ``lib`` on
LD_LIBRARY_PATH so that it finds libpython.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dga.errors import DgaError

STUB = "triton_python_backend_stub"


class ServerError(DgaError):
    """The bundled Triton server cannot be found, started or made ready."""


@dataclass(frozen=True)
class Layout:
    """Where the nvidia-pytriton wheel keeps the server."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


def _find_pytriton():
    return importlib.util.find_spec("pytriton")  # found, not imported: pytriton's own API is not used


def bundled_server() -> Layout:
    """The wheel's tritonserver; ModuleNotFoundError (name 'pytriton') when the [serve] extra is missing."""
    spec = _find_pytriton()
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'pytriton'", name="pytriton")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    layout = Layout(root / "bin" / "tritonserver", root.parent.parent / "nvidia_pytriton.libs",
                    root / "backends" / "python", root / "python_backend_stubs" / version / STUB)
    for what, path in (("the tritonserver binary", layout.binary), ("the python backend", layout.python_backend),
                       (f"a python-backend stub for Python {version}", layout.stub)):
        if not path.exists():
            raise ServerError(f"the installed nvidia-pytriton has no {what} ({path}): reinstall it with "
                              f"pip install --force-reinstall 'dga[serve]'")
    return layout


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child before exec (Linux): SIGTERM when dga-serve dies
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


class TritonServer:
    """The bundled tritonserver over ``repository``; ``workdir`` (removed by ``stop``) holds its backends."""

    def __init__(self, repository: Path, endpoints: Endpoints, workdir: Path, log_file: Path | None = None):
        self.repository, self.endpoints, self.workdir = Path(repository), endpoints, Path(workdir)
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None

    def command(self, layout: Layout, backends: Path) -> list[str]:
        e = self.endpoints
        return [str(layout.binary), "--model-repository", str(self.repository), "--backend-directory", str(backends),
                "--http-address", e.host, "--http-port", str(e.http_port),
                "--grpc-address", e.host, "--grpc-port", str(e.grpc_port),
                "--metrics-address", e.host, "--metrics-port", str(e.metrics_port),
                "--exit-on-error=false", "--log-verbose=0"]

    def environment(self, layout: Layout) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(layout.libs), str(Path(sys.base_prefix) / "lib")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep)
                                                          if p])
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def start(self) -> None:
        layout = bundled_server()
        backends = self.workdir / "backends"
        shutil.copytree(layout.python_backend, backends / "python")
        shutil.copy2(layout.stub, backends / "python" / STUB)
        out = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115 - closed with the process
        try:
            self.proc = subprocess.Popen(self.command(layout, backends), env=self.environment(layout),
                                         stdout=out, stderr=subprocess.STDOUT if out else None,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        finally:
            if out:
                out.close()

    def ready(self, model: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoints.http}/v2/models/{model}/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, model: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"tritonserver exited with status {self.proc.returncode} before model '{model}' "
                                  f"was ready (its log above says why)")
            if self.ready(model):
                return
            time.sleep(0.25)
        raise ServerError(f"model '{model}' was not ready after {timeout:.0f} s (raise --ready-timeout, or see "
                          f"tritonserver's log above)")

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self) -> int:
        assert self.proc is not None
        while True:
            try:
                return self.proc.wait()
            except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
                continue

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the work folder is removed either way."""
        rc = None
        try:
            if self.proc is not None:
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGTERM)
                    try:
                        self.proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait(10)
                rc = self.proc.returncode
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return rc
