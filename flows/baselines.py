"""Flow: fit per-dataset baselines on the test tasks of a stored prior, in parallel on Dask.

One Prefect task per (baseline, task) on a DaskTaskRunner (threads locally, each handing its
fit to one of ``n_workers`` processes, ``tasks/fitprocs.py``; or the scheduler at
``$DASK_SCHEDULER_ADDRESS``). Records go to ``storage.results.ResultStore`` keyed by
(baseline, config hash, prior), so re-running reuses finished fits and retries failed ones.
"""
from __future__ import annotations

import contextlib
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
from tasks.baselines import fit_baseline_task
from tasks.fitprocs import fit_processes

__all__ = ["run_baselines", "fit_baselines_parallel"]


@flow(name="fit-baselines")
def fit_baselines_parallel(store: str, root: str, jobs: list[dict], max_queries: int | None, seed: int) -> list[dict]:
    logger = get_run_logger()
    t0 = time.perf_counter()
    futures = [fit_baseline_task.submit(store, root, max_queries=max_queries, seed=seed, **job) for job in jobs]
    progress = Progress(artifact_key("baselines", Path(store).stem), len(futures), "baseline fits done")
    records, n_failed = [], 0
    for n, fut in enumerate(as_completed(futures), start=1):
        rec = fut.result()
        records.append(rec)
        logger.info("progress %d/%d fits (%s task %d: %s), %.1fs elapsed", n, len(futures), rec["method"],
                    rec["task"], rec["status"], time.perf_counter() - t0)
        n_failed += rec["status"] != "ok"
        progress.update(n, f"{n_failed} failed, {time.perf_counter() - t0:.0f}s elapsed")
    return records


@flow(name="run-baselines", flow_run_name=store_run_name("baselines"))
def run_baselines(store: str, baselines: list[BaselineRun], n_tasks: int = 10, root: str = ".causalmeta",
                  n_workers: int = 2, max_queries: int | None = None, seed: int = 0) -> dict[str, list[dict]]:
    """Fit every baseline on the first ``n_tasks`` test tasks of ``store``; return records by method key."""
    root = check_root(root)
    prior = PriorStore.open(store)  # refuses incomplete or corrupt stores before any work
    n = min(n_tasks, prior.n_tasks("test"))
    jobs, keys = [], {}
    for b in baselines:
        b = BaselineRun.model_validate(b)
        key = config_key(b.name, b.typed_config.model_dump(mode="json"))
        keys[key] = b.name
        jobs += [dict(method=b.name, method_key=key, config=b.typed_config, split="test", index=t) for t in range(n)]
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
