"""Nothing the project starts listens beyond loopback (issue 12, item 1).

Two checks, each listing the LISTEN sockets (psutil) of every process it started:

- the embedded ``LocalCluster`` of ``flows.runtime.make_task_runner`` (threads of this
  process: its scheduler and worker HTTP servers bound every interface before);
- the whole single-machine stack, ``deploy/stack.sh up --workers 2`` (Prefect server, MLflow
  server, Dask scheduler, 2 Dask workers with nannies, the serve process), on free ports.
"""
from __future__ import annotations

import os
import subprocess
import time

import psutil
import pytest

from conftest import REPO, free_tcp_port, require_binary

pytestmark = pytest.mark.service

LOOPBACK = {"127.0.0.1", "::1"}


def _listening(pids) -> set[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket in LISTEN state of the processes ``pids``."""
    out = set()
    for pid in pids:
        try:
            for c in psutil.Process(pid).net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.add((pid, c.laddr.ip, c.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def test_local_cluster_listens_on_loopback_only():
    from flows.runtime import make_task_runner

    before = {(ip, port) for _, ip, port in _listening([os.getpid()])}
    runner = make_task_runner(2)
    with runner:
        assert runner.client.run(lambda: 1)  # the cluster starts on first use of the client
        new = {(ip, port) for _, ip, port in _listening([os.getpid()])} - before
    assert len(new) >= 3, new  # the scheduler's and the two workers' HTTP servers: not vacuous
    assert {ip for ip, _ in new} <= LOOPBACK, f"listening beyond loopback: {sorted(new)}"


def _stack_processes(state) -> list[int]:
    """Pids of every process in the process groups whose leaders stack.sh recorded."""
    leaders = {int(p.read_text()) for p in (state / "pids").glob("*.pid")}
    pids = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) in leaders:
                pids.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def test_stack_listens_on_loopback_only(tmp_path):
    for name in ("prefect", "mlflow", "dask"):
        require_binary(name)
    ports = {k: free_tcp_port() for k in ("PREFECT_PORT", "MLFLOW_PORT", "DASK_PORT", "DASK_HTTP_PORT")}
    state = tmp_path / "state"
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "CAUSALMETA_ROOT": str(tmp_path / "root")}
    env.pop("CAUSALMETA_BIND", None)
    stack = [str(REPO / "deploy" / "stack.sh")]
    try:
        up = subprocess.run([*stack, "up", "--workers", "2", "--state", str(state)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        time.sleep(2)  # workers register with the scheduler and open their last servers
        pids = _stack_processes(state)
        sockets = _listening(pids)
        assert len(pids) >= 6, pids
        bound = {port for _, _, port in sockets}
        assert set(ports.values()) <= bound, (ports, sorted(sockets))  # not vacuous: the servers are there
        wide = sorted(s for s in sockets if s[1] not in LOOPBACK)
        assert not wide, "listening beyond loopback (pid, ip, port): " + ", ".join(
            f"{psutil.Process(p).name()} {p} {ip}:{port}" for p, ip, port in wide)
    finally:
        subprocess.run([*stack, "down", "--state", str(state)], env=env, cwd=REPO, capture_output=True,
                       timeout=120)
