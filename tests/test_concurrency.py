"""Issue 19: one training per (method, prior), cores held per kind of work, roots and thread budgets.

The locks are Prefect global concurrency limits, so these tests run them against the
session's real ``prefect server`` (tests/conftest.py); the flow-level behaviour (two
``meta-train`` runs -> one training) is in tests/test_service_prefect.py.
"""
from __future__ import annotations

import threading
from pathlib import Path
import time

import pytest

from flows.runtime import RootNotAllowedError, check_root, train_threads


# ---------------------------------------------------------------------------- no server
def test_check_root_allows_everything_when_unset_and_only_the_allowed_roots_when_set(tmp_path, monkeypatch):
    monkeypatch.delenv("CAUSALMETA_ALLOWED_ROOTS", raising=False)
    assert check_root(str(tmp_path / "a" / ".." / "b")) == str(tmp_path / "b")
    base = tmp_path / "served"
    monkeypatch.setenv("CAUSALMETA_ALLOWED_ROOTS", f"{base},memory://cm")
    assert check_root(str(base)) == str(base)
    assert check_root(str(base / "team" / "x")) == str(base / "team" / "x")
    assert check_root("memory://cm/sub") == "memory://cm/sub"
    for bad in [str(tmp_path / "served-evil"), str(base / ".." / "other"), "/etc", "memory://cmx", "s3://b/cm"]:
        with pytest.raises(RootNotAllowedError, match="outside the data roots"):
            check_root(bad)
    with pytest.raises(RootNotAllowedError, match="empty"):
        check_root("  ")


def test_train_threads_default_and_errors(monkeypatch):
    import os

    monkeypatch.delenv("CAUSALMETA_TRAIN_THREADS", raising=False)
    assert train_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("CAUSALMETA_TRAIN_THREADS", "3")
    assert train_threads() == 3
    for bad in ["0", "-1", "two"]:
        monkeypatch.setenv("CAUSALMETA_TRAIN_THREADS", bad)
        with pytest.raises(ValueError, match="CAUSALMETA_TRAIN_THREADS"):
            train_threads()


def test_lock_names():
    from flows.concurrency import cores_limit_name, training_lock_name

    assert training_lock_name("mace-tnp", "0123456789abcdef" * 4) == "causalmeta-train-mace-tnp-0123456789abcdef"
    assert cores_limit_name("stack host/1") == "causalmeta-cores-stack-host-1"
    with pytest.raises(ValueError, match="non-empty"):
        training_lock_name("", "abc")


# ---------------------------------------------------------------------------- server
@pytest.fixture
def api(prefect_server):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server.api_url


def _run_together(*targets):
    # each thread in a copy of this context: the `api` fixture's server is what they talk to
    # (a new thread starts from Prefect's process-global settings, which a temporary API of
    # another test may have set)
    import contextvars

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)


def _overlap(spans) -> bool:
    (a0, a1), (b0, b1) = spans
    return a0 < b1 and b0 < a1


@pytest.mark.service
def test_training_lock_serialises_one_prior_and_is_reentrant(api):
    from flows.concurrency import training_lock

    h, other = "ab" * 32, "cd" * 32
    spans, errors = {}, []

    def hold(tag, prior_hash, seconds=1.5):
        def run():
            try:
                with training_lock("m", prior_hash):
                    t0 = time.monotonic()
                    with training_lock("m", prior_hash) as again:  # reentrant: no self-deadlock
                        assert again == 0.0
                    time.sleep(seconds)
                    spans[tag] = (t0, time.monotonic())
            except Exception as exc:  # surfaced below
                errors.append(exc)
        return run

    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("flows.concurrency").addHandler(handler)
    logging.getLogger("flows.concurrency").setLevel(logging.INFO)
    try:
        _run_together(hold("a", h), hold("b", h))
    finally:
        logging.getLogger("flows.concurrency").removeHandler(handler)
    assert not errors, errors
    assert not _overlap([spans["a"], spans["b"]]), spans  # one prior: one after the other
    # the second one said, once, what it waits for
    said = [r.getMessage() for r in records if "waiting for causalmeta-train-m-" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in records]
    spans.clear()
    # both limits exist before the timed part: two first-time creations at once race in the
    # server's SQLite (a UNIQUE-constraint retry) and made the spans miss each other in CI
    from flows.concurrency import ensure_limit, training_lock_name

    ensure_limit(training_lock_name("m", other), 1)
    # held 5 s: an acquisition at the server can still take ~2 s when both hit its SQLite at once
    # (a clean-clone CI run: c entered 0.2 s after a's 1.5 s hold ended); serialised locks would
    # still start c only after a's whole hold
    _run_together(hold("a", h, 5.0), hold("c", other, 5.0))
    assert not errors, errors
    assert _overlap([spans["a"], spans["c"]]), spans  # two priors: side by side


@pytest.mark.service
def test_occupy_cores_caps_at_the_pool_and_serialises_when_full(api, monkeypatch):
    from flows.concurrency import occupy_cores

    monkeypatch.setenv("CAUSALMETA_POOL_CORES", "2")
    pool = f"test-{time.monotonic_ns()}"
    with occupy_cores(5, "more than the pool", pool=pool) as waited:  # capped at 2: no deadlock
        assert waited < 30
    spans, errors = {}, []

    def hold(tag, n):
        def run():
            try:
                with occupy_cores(n, tag, pool=pool):
                    t0 = time.monotonic()
                    time.sleep(1.5)
                    spans[tag] = (t0, time.monotonic())
            except Exception as exc:
                errors.append(exc)
        return run

    _run_together(hold("fit-a", 1), hold("fit-b", 1))  # 1 + 1 <= 2: together
    assert not errors and _overlap([spans["fit-a"], spans["fit-b"]]), (errors, spans)
    spans.clear()
    _run_together(hold("train", 2), hold("fit", 1))  # 2 + 1 > 2: one waits
    assert not errors and not _overlap([spans["train"], spans["fit"]]), (errors, spans)


# ---------------------------------------------------------------------------- ephemeral API: flock files
@pytest.fixture
def ephemeral():
    """Prefect's ephemeral mode (no PREFECT_API_URL), whatever temporary API an earlier test started."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


@pytest.mark.usefixtures("ephemeral")
def test_without_a_server_the_locks_are_flock_files_released_when_the_holder_dies(tmp_path, monkeypatch):
    """The ephemeral API keeps leases in a process that dies with its flow; flock files do not
    outlive their holder, so a killed `make demo` cannot leave a training lock taken."""
    import subprocess
    import sys

    from flows.concurrency import occupy_cores, server_mode, training_lock

    assert not server_mode()
    monkeypatch.setenv("CAUSALMETA_POOL_CORES", "2")
    h = "ef" * 32
    code = (
        "import sys, time\n"
        "from flows.concurrency import training_lock\n"
        "with training_lock('m', sys.argv[1], root=sys.argv[2]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, h, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=str(Path(__file__).resolve().parents[1]))
    try:
        assert holder.stdout.readline().strip() == "held"
        got = []
        import contextvars

        t = threading.Thread(target=contextvars.copy_context().run,  # in this (ephemeral) context
                             args=(lambda: got.append(training_lock("m", h, root=str(tmp_path)).__enter__()),))
        t.start()
        t.join(timeout=2)
        assert t.is_alive() and not got  # blocked by the other process
        holder.kill()  # SIGKILL: no cleanup runs
        t.join(timeout=30)
        assert got and got[0] > 1.5, got
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "locks" / f"causalmeta-train-m-{h[:16]}" / "slot-0.lock").is_file()
    pool = f"test-local-{time.monotonic_ns()}"
    spans = {}

    def hold(tag, n):
        def run():
            with occupy_cores(n, tag, pool=pool):
                t0 = time.monotonic()
                time.sleep(1.0)
                spans[tag] = (t0, time.monotonic())
        return run

    _run_together(hold("a", 1), hold("b", 1))
    assert _overlap([spans["a"], spans["b"]]), spans
    spans.clear()
    _run_together(hold("train", 2), hold("fit", 1))
    assert not _overlap([spans["train"], spans["fit"]]), spans


@pytest.mark.service
def test_reset_clears_stale_slots(api):
    from prefect.client.orchestration import get_client

    from flows.concurrency import ensure_limit, reset_stale_slots

    name = f"causalmeta-test-stale-{time.monotonic_ns()}"
    ensure_limit(name, 1)
    with get_client(sync_client=True) as client:
        client.increment_concurrency_slots(names=[name], slots=1, mode="concurrency")  # a holder that died
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 1
        assert any(name in r for r in reset_stale_slots())
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
