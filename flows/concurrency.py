"""Who may run what at the same time: Prefect global concurrency limits, across processes and machines.

Two kinds of limit, both held as leases on the Prefect API (so they work between the serve
process, the flow-run subprocesses it starts, and workers on other machines; a crashed holder's
lease expires after :data:`LEASE_S` seconds and its slots come back):

* **one training per (method, prior)**: limit ``causalmeta-train-<method>-<prior hash16>`` with
  one slot. :func:`training_lock` takes it; whoever comes second waits, logging which flow run
  owns it, and then finds the registered model and reuses it (``flows/train.py``). Model reuse is
  keyed by (method, prior hash) in the registry (``Tracker.registered_model_for_prior``), so the
  lock uses the same key: the benchmark's own training and a ``retrain-on-prior-change`` run
  started by the same prior's event never both train. The benchmark takes the lock *before* it
  generates the prior, so the event's run always waits for the benchmark's training (with the
  benchmark's training settings) instead of racing it. Reentrant within a process: a flow that
  holds the lock can call ``meta_train`` as a subflow.
* **cores per machine**: limit ``causalmeta-cores-<pool>`` with one slot per core. Meta-training
  occupies its thread budget, a baseline stage occupies one slot per Dask worker thread it runs
  on that pool, so a training started by an event while a benchmark fits its baselines waits
  for the cores instead of running at a fraction of its speed beside them (issue 19). The
  pool of this process is ``$CAUSALMETA_CORE_POOL`` (default: the host name); the pool of the
  Dask workers is ``$CAUSALMETA_DASK_POOL`` (default: this process's pool for the local threaded
  cluster, the scheduler address for a remote one, i.e. other cores than ours).

Two backends, chosen per call:

* with a Prefect **server** (``PREFECT_API_URL`` set: the stack, a cluster) the limits above;
  the server keeps leases in memory, so a restarted server would see the slots of runs that
  died with it as taken forever: ``deploy/stack.sh up`` clears the ``causalmeta-*`` slots
  (``python -m flows.concurrency reset``) before anything runs;
* with Prefect's **ephemeral** API (the CLI, ``make demo``) every process starts its own
  temporary server on a shared SQLite file, and a process killed while holding a slot would
  leave it taken for every later run. There, the same locks are ``fcntl.flock`` files (the
  kernel releases them when the holder dies): the training lock in ``<root>/locks/``, the
  cores as one slot file per core in ``$TMPDIR/causalmeta-locks-<uid>/`` (this machine only).

The owner of a training lock tags its flow run ``<limit name>`` while it holds it (visible in
the UI's run list), which is how a waiting run can say whom it waits for.
"""
from __future__ import annotations

import contextlib
import contextvars
import fcntl
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

__all__ = [
    "LEASE_S",
    "core_pool",
    "cores_limit_name",
    "dask_pool",
    "ensure_limit",
    "occupy_cores",
    "pool_cores",
    "reset_stale_slots",
    "server_mode",
    "training_lock",
    "training_lock_name",
    "training_locks",
]

#: Lease of every slot, renewed in the background while held (Prefect's minimum is 60 s).
LEASE_S = 60.0
ENV_CORE_POOL = "CAUSALMETA_CORE_POOL"
ENV_DASK_POOL = "CAUSALMETA_DASK_POOL"
ENV_POOL_CORES = "CAUSALMETA_POOL_CORES"

_held: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("causalmeta_held_locks", default=frozenset())
log = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def training_lock_name(method: str, prior_hash: str) -> str:
    """``causalmeta-train-<method>-<first 16 hex of the prior hash>``."""
    if not method or not prior_hash:
        raise ValueError(f"training lock: method and prior hash must be non-empty, got {method!r}, {prior_hash!r}")
    return f"causalmeta-train-{_slug(method)}-{prior_hash[:16]}"


def core_pool() -> str:
    """The pool of cores this process runs on (``$CAUSALMETA_CORE_POOL`` or the host name)."""
    return _slug(os.environ.get(ENV_CORE_POOL) or socket.gethostname() or "localhost")


def dask_pool(remote_address: str | None) -> str:
    """The pool of the Dask workers: ``$CAUSALMETA_DASK_POOL``, else ours (local) or the scheduler's."""
    if os.environ.get(ENV_DASK_POOL):
        return _slug(os.environ[ENV_DASK_POOL])
    return core_pool() if not remote_address else _slug(remote_address)


def cores_limit_name(pool: str) -> str:
    return f"causalmeta-cores-{_slug(pool)}"


def pool_cores() -> int:
    """Cores of this machine's pool: ``$CAUSALMETA_POOL_CORES`` or the CPUs this process may use."""
    from flows.runtime import positive_int_env, usable_cores

    return positive_int_env(ENV_POOL_CORES, usable_cores())


def ensure_limit(name: str, limit: int) -> int:
    """Create the global concurrency limit ``name`` with ``limit`` slots unless it exists.

    Prefect only limits names that exist (acquiring a missing one is a no-op), and two
    processes may create the same name at once: the loser's 409 means it exists, which is fine.
    An existing limit keeps its size (an operator may have changed it in the UI); returns
    the size in force.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return int(client.read_global_concurrency_limit_by_name(name).limit)
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            return limit
        except ObjectAlreadyExists:
            return int(client.read_global_concurrency_limit_by_name(name).limit)


def _holder():
    from prefect.context import FlowRunContext
    from prefect.types._concurrency import ConcurrencyLeaseHolder

    ctx = FlowRunContext.get()
    return ConcurrencyLeaseHolder(type="flow_run", id=ctx.flow_run.id) if ctx and ctx.flow_run else None


def _owners(name: str) -> list[str]:
    """Names of the running flow runs tagged with the lock ``name`` (its holders)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType, FlowRunFilterTags
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[name]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))))
    return [f"{r.name} ({r.id})" for r in runs]


def _tag_own_run(name: str, on: bool) -> None:
    """Add (``on``) or remove the tag ``name`` on this process's flow run: the lock's holder."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if not (ctx and ctx.flow_run):
        return
    with get_client(sync_client=True) as client:
        tags = list(client.read_flow_run(ctx.flow_run.id).tags)
        if on and name not in tags:
            client.update_flow_run(ctx.flow_run.id, tags=[*tags, name])
        elif not on and name in tags:
            client.update_flow_run(ctx.flow_run.id, tags=[t for t in tags if t != name])


def _busy(name: str, occupy: int) -> bool:
    """Whether taking ``occupy`` slots of ``name`` would wait now (for the log line only: the
    acquisition itself is atomic on the server)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    return limit.active_slots + occupy > limit.limit


@contextlib.contextmanager
def _acquire(name: str, occupy: int, what: str, logger, owners: bool) -> Iterator[float]:
    """Hold ``occupy`` slots of ``name``; yields the seconds waited. Logs whom it waits for.

    One blocking acquisition, no timeout-and-retry: an acquisition that timed out client-side
    can still be granted by the server afterwards, leaving slots held until their lease expires.
    """
    from prefect.concurrency.sync import concurrency

    t0 = time.perf_counter()

    def report() -> None:  # best effort: a failed lookup must not stop the work
        with contextlib.suppress(Exception):
            if _busy(name, occupy):
                who = ", ".join(_owners(name)) if owners else ""
                logger.info("%s: waiting for %s%s", what, name, f", held by {who}" if who else "")

    # said once, if the slots are not granted within a second (a check before asking could
    # race the holder's own acquisition and miss it)
    # in this context: the timer's thread would otherwise start from Prefect's process-global
    # settings, not the API this caller was configured with (temporary_settings)
    timer = threading.Timer(1.0, contextvars.copy_context().run, args=(report,))
    timer.daemon = True
    timer.start()
    try:
        cm = concurrency(name, occupy=occupy, lease_duration=LEASE_S, strict=True, holder=_holder(),
                         raise_on_lease_renewal_failure=False)  # a transient API error must not kill a long training
        cm.__enter__()
    finally:
        timer.cancel()
    try:
        yield time.perf_counter() - t0
    finally:
        cm.__exit__(None, None, None)


def server_mode() -> bool:
    """True when a Prefect server is configured (``PREFECT_API_URL``), False for the ephemeral API."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def machine_lock_dir() -> Path:
    """This machine's folder of lock files (cores), private to the user."""
    path = Path(tempfile.gettempdir()) / f"causalmeta-locks-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _run_label() -> str:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = f"{ctx.flow_run.name} ({ctx.flow_run.id})" if ctx and ctx.flow_run else "no flow run"
    return f"{run}, pid {os.getpid()}, since {datetime.now(timezone.utc).isoformat(timespec='seconds')}"


def _try_flock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, _run_label().encode(), 0)
    return fd


@contextlib.contextmanager
def _file_slots(folder: Path, size: int, occupy: int, what: str, logger) -> Iterator[float]:
    """``occupy`` of ``size`` flock slot files in ``folder``, all or none (no partial holds, so
    two waiters cannot deadlock each other); yields the seconds waited."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    t0, told, fds = time.perf_counter(), False, []
    while True:
        for i in range(size):
            fd = _try_flock(folder / f"slot-{i}.lock")
            if fd is not None:
                fds.append(fd)
                if len(fds) == occupy:
                    break
        if len(fds) == occupy:
            break
        for fd in fds:
            os.close(fd)
        fds = []
        if not told:
            holders = sorted({(folder / f"slot-{i}.lock").read_text(errors="replace").strip() for i in range(size)
                              if (folder / f"slot-{i}.lock").is_file()} - {""})
            logger.info("%s: waiting for %s%s", what, folder.name, f", held by {'; '.join(holders)}" if holders else "")
            told = True
        time.sleep(0.5)
    try:
        yield time.perf_counter() - t0
    finally:
        for fd in fds:
            os.close(fd)  # releases the flock


@contextlib.contextmanager
def training_lock(method: str, prior_hash: str, logger=None, root: str | None = None) -> Iterator[float]:
    """Hold the one training slot of (method, prior); yields the seconds waited (0 when reentrant).

    ``root``: the data root, where the ephemeral backend keeps its lock file (default: this
    machine's lock folder).
    """
    logger = logger or log
    name = training_lock_name(method, prior_hash)
    if name in _held.get():
        yield 0.0
        return
    what = f"training {method} on prior {prior_hash[:12]}"
    if server_mode():
        ensure_limit(name, 1)
        held = _acquire(name, 1, what, logger, owners=True)
    else:
        folder = (Path(root) / "locks" if root and "://" not in str(root) else machine_lock_dir()) / name
        held = _file_slots(folder, 1, 1, what, logger)
    with held as waited:
        if server_mode():
            _tag_own_run(name, True)
        token = _held.set(_held.get() | {name})
        try:
            yield waited
        finally:
            _held.reset(token)
            if server_mode():
                with contextlib.suppress(Exception):  # a tag left behind only misnames an owner
                    _tag_own_run(name, False)


@contextlib.contextmanager
def training_locks(methods, prior_hash: str, logger=None, root: str | None = None) -> Iterator[None]:
    """:func:`training_lock` for several methods on one prior, in name order (no lock-order deadlock)."""
    with contextlib.ExitStack() as stack:
        for m in sorted(set(methods)):
            stack.enter_context(training_lock(m, prior_hash, logger, root))
        yield


@contextlib.contextmanager
def occupy_cores(n: int, what: str, pool: str | None = None, logger=None) -> Iterator[float]:
    """Hold ``n`` core slots of ``pool`` (default: this machine's); capped at the pool's size."""
    logger = logger or log
    pool = pool or core_pool()
    name = cores_limit_name(pool)
    if server_mode():
        size = ensure_limit(name, pool_cores())
        n = max(1, min(int(n), size))
        held = _acquire(name, n, f"{what} ({n} cores of pool {pool})", logger, owners=False)
    else:
        size = pool_cores()
        n = max(1, min(int(n), size))
        held = _file_slots(machine_lock_dir() / name, size, n, f"{what} ({n} cores of pool {pool})", logger)
    with held as waited:
        yield waited


def reset_stale_slots(prefix: str = "causalmeta-") -> list[str]:
    """Set the active slots of every limit named ``prefix*`` to 0; the names reset.

    Only correct when no holder is alive: right after a Prefect server (re)started, whose
    in-memory leases died with the old process (deploy/stack.sh calls it before serving).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    done = []
    with get_client(sync_client=True) as client:
        for limit in client.read_global_concurrency_limits(limit=200):
            if limit.name.startswith(prefix) and limit.active_slots:
                client.update_global_concurrency_limit(limit.name, GlobalConcurrencyLimitUpdate(active_slots=0))
                done.append(f"{limit.name} ({limit.active_slots} slots)")
    return done


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["reset"]:
        print("usage: python -m flows.concurrency reset   (clear stale causalmeta-* slots after a server restart)",
              file=sys.stderr)
        return 2
    done = reset_stale_slots()
    print("cleared stale slots: " + (", ".join(done) if done else "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
