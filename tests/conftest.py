"""Shared test fixtures: an isolated environment, free ports, and real services on loopback.

At import (before any test module imports prefect or mlflow):

- telemetry is off (``DO_NOT_TRACK``, ``MLFLOW_DISABLE_TELEMETRY``,
  ``PREFECT_SERVER_ANALYTICS_ENABLED``);
- ``PREFECT_HOME`` is a fresh temporary folder, so ephemeral-mode runs of the test session
  never touch ``~/.prefect``;
- the service variables of storage.settings (``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``,
  ``DASK_SCHEDULER_ADDRESS``, ``CAUSALMETA_ROOT``) are removed: a test must never send runs
  to a server the developer happens to have configured. Tests that want a service start
  their own (fixtures below) and pass its address explicitly.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

os.environ.update(
    {
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
for _name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "DASK_SCHEDULER_ADDRESS", "CAUSALMETA_ROOT",
              "CAUSALMETA_ALLOWED_ROOTS", "CAUSALMETA_TRAIN_THREADS", "CAUSALMETA_CORE_POOL", "CAUSALMETA_DASK_POOL",
              "CAUSALMETA_POOL_CORES"):
    os.environ.pop(_name, None)
_PREFECT_HOME = tempfile.mkdtemp(prefix="causalmeta-test-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def free_port():
    """Factory of free loopback ports: ``port = free_port()``."""
    return free_tcp_port


# ---------------------------------------------------------------------------- services
@dataclass
class Service:
    """A child process in its own process group, logging to `log_path`."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except FileNotFoundError:
            return "<no log>"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group (servers fork workers), SIGKILL after `timeout`."""
        if not self.alive():
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


@dataclass
class ServiceLauncher:
    """Starts services, waits for them, and stops whatever is still running at session end."""

    log_dir: Path
    started: list[Service] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path = REPO) -> Service:
        log_path = self.log_dir / f"{name}-{len(self.started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=str(cwd),
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: stop() reaches its children
            )
        service = Service(name, proc, log_path)
        self.started.append(service)
        return service

    @staticmethod
    def wait_http(service: Service, url: str, timeout: float) -> None:
        """Poll `url` until it answers 200; fail with the service's log if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not service.alive():
                raise RuntimeError(f"{service.name} exited with {service.proc.returncode}:\n{service.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{service.name}: {url} not healthy after {timeout}s:\n{service.log_tail()}")

    @staticmethod
    def wait_log(service: Service, needle: str, timeout: float) -> None:
        """Wait until `needle` appears in the service's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in service.log_tail(200_000):
                return
            if not service.alive():
                raise RuntimeError(f"{service.name} exited with {service.proc.returncode}:\n{service.log_tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"{service.name}: {needle!r} not in its log after {timeout}s:\n{service.log_tail()}")

    def stop_all(self) -> None:
        for service in reversed(self.started):
            service.stop()


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """A :class:`ServiceLauncher` whose services are all stopped at the end of the session."""
    launcher = ServiceLauncher(tmp_path_factory.mktemp("service-logs"))
    yield launcher
    launcher.stop_all()


def require_binary(name: str) -> Path:
    """The venv's console script `name`; skip (with the reason) if it is not installed."""
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{path} not found: install the project (`make install`) to run service tests")
    return path


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    home: Path
    service: Service

    @property
    def env(self) -> dict[str, str]:
        """Environment for child processes that must talk to this server."""
        return {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home)}


@pytest.fixture(scope="session")
def prefect_server(services, tmp_path_factory) -> PrefectServer:
    """A real ``prefect server start`` on a free loopback port, own PREFECT_HOME (SQLite inside).

    Session scope: one server (~10 s to start) serves every module that needs it.
    """
    prefect = require_binary("prefect")
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_tcp_port()
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_UI_ENABLED": "false",
    }
    service = services.start(
        "prefect-server", [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env
    )
    api_url = f"http://127.0.0.1:{port}/api"
    services.wait_http(service, f"{api_url}/health", timeout=90)
    return PrefectServer(api_url=api_url, home=home, service=service)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for every test that runs flows in this process. Each module
    starting its own cost ~20 s of the suite. Once started it stays for the session: a test
    that needs Prefect's plain ephemeral mode unsets ``PREFECT_API_URL`` itself."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small batched tensors: one intra-op thread avoids oversubscription stalls on a shared
    2-core machine (10x slower fits were seen with two). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """``mlflow.set_tracking_uri`` writes ``MLFLOW_TRACKING_URI`` into ``os.environ``; a test that
    calls it would send every later test's subprocesses (the served stack) to its database."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {k: os.environ.get(k) for k in names}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
