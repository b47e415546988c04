"""Prefect task: fit one baseline on one stored test task, score it, persist the record."""
from __future__ import annotations

import time
import traceback

from prefect import get_run_logger, task
from pydantic import BaseModel

from pipeline_lib.taskdata import task_slice
from storage.prior_store import PriorStore
from storage.results import ResultStore
from tasks.fitprocs import evaluate_in_process

__all__ = ["fit_baseline_task"]


@task(retries=2, retry_delay_seconds=[1, 4], persist_result=False, task_run_name="{method}-{split}-{index}")
def fit_baseline_task(store_path: str, root: str, method: str, method_key: str, config: BaseModel,
                      split: str, index: int, max_queries: int | None, seed: int) -> dict:
    """Fit ``method`` on task ``index`` of ``split`` and write its result record.

    Reading the store is retried (storage may be remote); a failure of the method itself
    is NOT retried: it is recorded as ``status: failed`` with the error, so one failing
    fit never aborts the others and is never silently dropped. An existing ``ok`` record
    for the same (method key, prior) is reused. The fit runs in a process of the flow's fit
    pool when one is open (``tasks/fitprocs.py``), else in this thread.
    """
    results = ResultStore.for_store(root, store_path)
    done = results.load(method_key, split, index)
    if done is not None and done.get("status") == "ok":
        return done
    store = PriorStore.open(store_path)
    task_data = task_slice(store.read(split, index, index + 1), 0)
    # where the task came from: the oracle redraws its true SCM from the prior's seed
    task_data["scm"] = {"config": store.config.to_json(), "split": split, "index": index}
    record = {"method": method, "method_key": method_key, "split": split, "task": index,
              "config": config.model_dump(mode="json")}
    t0 = time.perf_counter()
    try:
        metrics, arrays, info = evaluate_in_process(method, config, task_data, max_queries=max_queries,
                                                    seed=seed + index)
        # converged False: the report names the method "(not converged k/n)" (storage/report.py)
        record.update(status="ok", error=None, metrics=metrics, **info)
        if info.get("converged") is False:
            get_run_logger().warning("%s on %s[%d] did not converge: %s", method, split, index, info["convergence"])
    except Exception as exc:  # recorded, by design: see docstring
        arrays = None
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", metrics={},
                      traceback=traceback.format_exc(limit=5))
        get_run_logger().warning("%s failed on %s[%d]: %s", method, split, index, record["error"])
    record["wall_s"] = time.perf_counter() - t0
    results.save(method_key, split, index, record, arrays)
    return record

