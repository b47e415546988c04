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

__all__ = ["DASK_ADDRESS_ENV", "make_task_runner"]

DASK_ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"
LOOPBACK_ANY_PORT = "127.0.0.1:0"


def make_task_runner(n_workers: int = 2, *, address: str | None = None) -> DaskTaskRunner:
    """A DaskTaskRunner: remote scheduler if `address` or $DASK_SCHEDULER_ADDRESS, else local threads.

    `n_workers` is ignored for a remote scheduler (its size is the cluster's business).
    """
    # Dask's INFO lines (scheduler/worker life cycle) drown the pipeline's own progress logs
    logging.getLogger("distributed").setLevel(logging.WARNING)
    address = address or os.environ.get(DASK_ADDRESS_ENV) or None
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
