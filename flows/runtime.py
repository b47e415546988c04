"""Where flows run their tasks: the one place that builds the Prefect task runner.

Default (one machine): a Dask `LocalCluster` of `n_workers` single-threaded workers that
live as *threads* of the flow process (``processes=False``). Threads, not processes,
because with Prefect's ephemeral API every worker process would start its own temporary
API server on the same SQLite file ("database is locked"); the numeric work (numpy, torch,
Blosc) releases the GIL, so threads still run in parallel.

The local cluster talks over ``inproc://`` (no TCP port), but the scheduler and each worker
still start an HTTP server (health, metrics) that binds every interface on port 8787 / a
random port unless given an address: all of them are pinned to ``127.0.0.1`` (random ports,
so two flows on one machine do not collide).

Beyond one machine: set ``DASK_SCHEDULER_ADDRESS`` (e.g. ``tcp://10.0.0.5:8786``) and the
runner connects to that scheduler instead; its workers must share the Zarr root (shared
disk; fsspec URLs are not supported by PriorStore yet) and a Prefect API
(``PREFECT_API_URL``). Dask worker *processes* export ``MALLOC_TRIM_THRESHOLD_=65536`` by
default, which also freezes glibc's mmap threshold and made the sampler 1.3-1.7x slower
in benchmarks/prior_generation.py: start such workers without it
(``distributed.nanny.pre-spawn-environ``). A scheduler beyond loopback must use ``tls://``
with client certificates (deploy/stack.sh, ``CAUSALMETA_BIND``); the client here takes its
certificate from Dask's config (``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``,
``..._TLS__CLIENT__CERT``, ``..._TLS__CLIENT__KEY``), as every Dask client does.
"""
from __future__ import annotations

import logging
import os

from prefect_dask import DaskTaskRunner

__all__ = ["ALLOWED_ROOTS_ENV", "DASK_ADDRESS_ENV", "RootNotAllowedError", "TRAIN_THREADS_ENV", "check_root",
           "dask_address", "make_task_runner", "train_threads"]

DASK_ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"
LOOPBACK_ANY_PORT = "127.0.0.1:0"
#: torch / BLAS threads of a meta-training run (default: every core this process may use).
TRAIN_THREADS_ENV = "CAUSALMETA_TRAIN_THREADS"
#: comma-separated data roots (folders or URLs) that flow runs may use; set by ``deploy.serve`` to its root,
#: so a root typed into a UI form cannot point a run at an arbitrary path of the machine.
ALLOWED_ROOTS_ENV = "CAUSALMETA_ALLOWED_ROOTS"


class RootNotAllowedError(ValueError):
    """A flow's ``root`` parameter lies outside the roots this deployment allows."""


def positive_int_env(name: str, default: int) -> int:
    """The positive integer in ``$name``, ``default`` when unset or empty; an error naming it otherwise."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={raw!r}: must be a positive integer")
    return value


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def train_threads() -> int:
    """The thread budget of a training run: ``$CAUSALMETA_TRAIN_THREADS`` or the usable cores."""
    return positive_int_env(TRAIN_THREADS_ENV, usable_cores())


def check_root(root: str) -> str:
    """``root`` made absolute, refused unless it lies under one of ``$CAUSALMETA_ALLOWED_ROOTS``.

    Unset (the CLI, tests, ``make demo``): any root. Set (every run of ``deploy.serve``):
    the root must be one of the allowed roots or below one; URLs (``memory://``, ``s3://``)
    must start with an allowed URL.
    """
    from pathlib import Path

    text = str(root).strip()
    if not text:
        raise RootNotAllowedError("root: empty; give the data root directory")
    is_url = "://" in text
    resolved = text.rstrip("/") if is_url else str(Path(text).expanduser().resolve())
    allowed = [a.strip() for a in os.environ.get(ALLOWED_ROOTS_ENV, "").split(",") if a.strip()]
    if not allowed:
        return resolved
    for base in allowed:
        if "://" in base:
            b = base.rstrip("/")
            if is_url and (resolved == b or resolved.startswith(b + "/")):
                return resolved
        elif not is_url:
            b = Path(base).expanduser().resolve()
            p = Path(resolved)
            if p == b or b in p.parents:
                return resolved
    raise RootNotAllowedError(
        f"root: {text!r} is outside the data roots this deployment allows ({', '.join(allowed)}; "
        f"${ALLOWED_ROOTS_ENV}); leave it at its default or pick a folder below one of them")


def dask_address(address: str | None = None) -> str | None:
    return address or os.environ.get(DASK_ADDRESS_ENV) or None


def make_task_runner(n_workers: int = 2, *, address: str | None = None) -> DaskTaskRunner:
    """A DaskTaskRunner: remote scheduler if `address` or $DASK_SCHEDULER_ADDRESS, else local threads.

    `n_workers` is ignored for a remote scheduler (its size is the cluster's business).
    """
    # Dask's INFO lines (scheduler/worker life cycle) drown the pipeline's own progress logs
    logging.getLogger("distributed").setLevel(logging.WARNING)
    address = dask_address(address)
    if address:
        return DaskTaskRunner(address=address)
    if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive int, got {n_workers!r}")
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,
            "processes": False,
            "dashboard_address": LOOPBACK_ANY_PORT,
            "worker_dashboard_address": LOOPBACK_ANY_PORT,
        },
    )


def store_run_name(kind: str):
    """A Prefect ``flow_run_name`` callable: ``<kind>-<prior name>`` from the flow's ``store``
    parameter (``<root>/priors/<name>-<hash12>.zarr``), so the UI says what runs."""

    def name() -> str:
        from pathlib import Path

        from prefect.runtime import flow_run

        store = str(flow_run.parameters.get("store", "")).rstrip("/")
        return f"{kind}-{Path(store).stem.rsplit('-', 1)[0] or 'prior'}"

    return name
