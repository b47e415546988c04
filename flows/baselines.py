"""Flow: fit per-dataset baselines on the test tasks of a stored prior, in parallel on Dask.

One Prefect task per (baseline, group of tasks) on a DaskTaskRunner (threads locally, each handing its
fit to one of ``n_workers`` processes, ``tasks/fitprocs.py``; or the scheduler at
``$DASK_SCHEDULER_ADDRESS``). Records go to ``storage.results.ResultStore`` keyed by
(baseline, config hash, prior), so re-running reuses finished fits and retries failed ones.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch
from prefect import flow, get_run_logger
from prefect.futures import as_completed

from flows.concurrency import ENV_DASK_POOL, dask_pool, occupy_cores
from flows.runtime import check_root, dask_address, make_task_runner, store_run_name
from flows.spec import BaselineRun
from storage.prior_store import PriorStore
from storage.results import config_key
from tasks.artifacts import Progress, artifact_key
from tasks.baselines import fit_baseline_task, task_groups
from tasks.fitprocs import fit_processes

__all__ = ["baseline_key", "run_baselines", "fit_baselines_parallel", "group_count"]

MAX_FITS_PER_TASK = 8


def baseline_key(run: BaselineRun, int_holdout: float = 0.0) -> str:
    """Result key of a baseline run: its name and full typed config, and the held-out share of
    interventional rows when there is one (fitted on other rows: other numbers)."""
    cfg = run.typed_config.model_dump(mode="json")
    return config_key(run.name, {**cfg, "int_holdout": int_holdout} if int_holdout else cfg)


def group_count(n_tasks: int, n_workers: int, fits_per_task: int | None = None) -> int:
    """Prefect task runs per baseline for ``n_tasks`` fits: ``ceil(n_tasks / fits_per_task)``
    when given, else two per worker (so the workers stay balanced when fits differ in cost),
    more where a group would exceed :data:`MAX_FITS_PER_TASK` fits (so progress and retries
    stay fine-grained). A task run's orchestration (states, logs, the API server's share) costs
    0.2-0.5 s of CPU on this machine, more than a small fit: one task run per fit kept 2
    workers at 1.4x of one (``benchmarks/stack.py``)."""
    if fits_per_task is not None and fits_per_task < 1:
        raise ValueError(f"fits_per_task: must be >= 1, got {fits_per_task}")
    if n_tasks < 1:
        return 0
    if fits_per_task is not None:
        return math.ceil(n_tasks / fits_per_task)
    return min(n_tasks, max(2 * max(1, n_workers), math.ceil(n_tasks / MAX_FITS_PER_TASK)))


@flow(name="fit-baselines")
def fit_baselines_parallel(store: str, root: str, jobs: list[dict], max_queries: int | None, seed: int) -> list[dict]:
    logger = get_run_logger()
    t0 = time.perf_counter()
    futures = [fit_baseline_task.submit(store, root, max_queries=max_queries, seed=seed, **job) for job in jobs]
    total = sum(len(job["indices"]) for job in jobs)
    progress = Progress(artifact_key("baselines", Path(store).stem), total, "baseline fits done")
    records: list[dict] = []
    n_failed = 0
    for fut in as_completed(futures):
        group = fut.result()
        records += group
        n_failed += sum(r["status"] != "ok" for r in group)
        logger.info("progress %d/%d fits (%s tasks %s: %d ok), %.1fs elapsed", len(records), total, group[0]["method"],
                    ",".join(str(r["task"]) for r in group), sum(r["status"] == "ok" for r in group),
                    time.perf_counter() - t0)
        progress.update(len(records), f"{n_failed} failed, {time.perf_counter() - t0:.0f}s elapsed")
    return records


@flow(name="run-baselines", flow_run_name=store_run_name("baselines"))
def run_baselines(store: str, baselines: list[BaselineRun], n_tasks: int = 10, root: str = ".causalmeta",
                  n_workers: int = 2, max_queries: int | None = None, seed: int = 0,
                  fits_per_task: int | None = None, int_holdout: float = 0.0) -> dict[str, list[dict]]:
    """Fit every baseline on the first ``n_tasks`` test tasks of ``store``; return records by method key.

    ``fits_per_task``: fits of one baseline per Prefect task run (default :func:`group_count`).
    ``int_holdout``: the fraction of each regime's interventional rows kept out of every fit
    and scored by NLPID (``pipeline_lib.taskdata.holdout_int_rows``; 0: fit and score all).
    """
    root = check_root(root)
    prior = PriorStore.open(store)  # refuses incomplete or corrupt stores before any work
    n = min(n_tasks, prior.n_tasks("test"))
    groups = task_groups(n, group_count(n, n_workers, fits_per_task))
    jobs, keys = [], {}
    for b in baselines:
        b = BaselineRun.model_validate(b)
        key = baseline_key(b, int_holdout)
        keys[key] = b.name
        jobs += [dict(method=b.name, method_key=key, config=b.typed_config, split="test", indices=g,
                      int_holdout=int_holdout) for g in groups]
    threads = torch.get_num_threads()
    if n_workers > 1:
        torch.set_num_threads(1)  # one core per concurrent fit, no oversubscription
    address = dask_address()
    # the local cluster's workers are threads, and fits hold the GIL: each fit runs in one of
    # n_workers processes (tasks/fitprocs.py); a remote cluster's workers are processes already
    procs = fit_processes(n_workers) if (not address and n_workers > 1) else contextlib.nullcontext()
    # The fits declare their cores (flows/concurrency.py): a training on the same machine waits for
    # them, or they for it, instead of both running at half speed. A remote cluster whose pool is
    # not named ($CAUSALMETA_DASK_POOL) runs on other machines' cores: nothing to hold here.
    pool = dask_pool(address) if (not address or os.environ.get(ENV_DASK_POOL)) else None
    cores = occupy_cores(n_workers, f"{len(jobs)} baseline fits", pool=pool) if pool else contextlib.nullcontext()
    try:
        with cores, procs:
            records = fit_baselines_parallel.with_options(task_runner=make_task_runner(n_workers))(
                store, root, jobs, max_queries, seed)
    finally:
        torch.set_num_threads(threads)
    out: dict[str, list[dict]] = {k: [] for k in keys}
    for r in sorted(records, key=lambda r: r["task"]):
        out[r["method_key"]].append(r)
    failed = sum(r["status"] != "ok" for r in records)
    get_run_logger().info("baselines done: %d fits, %d failed (recorded)", len(records), failed)
    return out
