"""Prefect task: fit one baseline on a group of stored test tasks, score each, persist the records."""
from __future__ import annotations

import traceback

from prefect import get_run_logger, task
from prefect.runtime import task_run
from pydantic import BaseModel

from pipeline_lib.taskdata import task_slice
from storage.prior_store import PriorStore
from storage.results import ResultStore
from tasks.fitprocs import evaluate_many

__all__ = ["fit_baseline_task", "task_groups"]


def task_groups(n_tasks: int, n_groups: int) -> list[list[int]]:
    """Task indices ``0..n_tasks-1`` in ``min(n_groups, n_tasks)`` consecutive groups whose
    sizes differ by one at most (the larger ones first)."""
    n_groups = max(1, min(int(n_groups), n_tasks))
    size, extra = divmod(n_tasks, n_groups)
    bounds = [0]
    for g in range(n_groups):
        bounds.append(bounds[-1] + size + (g < extra))
    return [list(range(lo, hi)) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def _run_name() -> str:
    p = task_run.parameters
    ix = p["indices"]
    return f"{p['method']}-{p['split']}-" + (f"{ix[0]}" if len(ix) == 1 else f"{ix[0]}..{ix[-1]}")


@task(retries=2, retry_delay_seconds=[1, 4], persist_result=False, task_run_name=_run_name)
def fit_baseline_task(store_path: str, root: str, method: str, method_key: str, config: BaseModel,
                      split: str, indices: list[int], max_queries: int | None, seed: int,
                      int_holdout: float = 0.0) -> list[dict]:
    """Fit ``method`` on each task of ``indices`` of ``split``; write and return one record per task.

    Several fits share one Prefect task run: a task run's orchestration (states, logs, about
    0.2-0.5 s of the flow process's time on this machine) would otherwise cost more than a
    small fit. Reading the store is retried (storage may be remote); a failure of the method
    itself is NOT retried: it is recorded as ``status: failed`` with the error, so one failing
    fit never aborts the others and is never silently dropped. An existing ``ok`` record for
    the same (method key, prior) is reused, so a retried group refits only what is missing.
    The fits run in a process of the flow's fit pool when one is open
    (``tasks/fitprocs.py``), else in this thread. ``int_holdout``: the fraction of each
    regime's interventional rows kept out of the fit and scored (``pipeline_lib.taskdata``).
    """
    results = ResultStore.for_store(root, store_path)
    records = {t: results.load(method_key, split, t) for t in indices}
    todo = [t for t, rec in records.items() if rec is None or rec.get("status") != "ok"]
    if todo:
        store = PriorStore.open(store_path)
        lo = min(todo)
        batch = store.read(split, lo, max(todo) + 1)
        config_json = store.config.to_json()
        fits = []
        for t in todo:
            task_data = task_slice(batch, t - lo)
            # where the task came from: the oracle redraws its true SCM from the prior's seed
            task_data["scm"] = {"config": config_json, "split": split, "index": t}
            fits.append((task_data, seed + t))
        # all of the group's fits are queued at once (the pool stays busy between task runs);
        # each record is written as its fit returns
        outcomes = evaluate_many(method, config, fits, max_queries=max_queries, int_holdout=int_holdout)
        for t, (outcome, seconds) in zip(todo, outcomes):
            records[t] = _record(results, method, method_key, config, split, t, outcome, seconds, int_holdout)
    return [records[t] for t in indices]


def _record(results: ResultStore, method: str, method_key: str, config: BaseModel, split: str, index: int,
            outcome: tuple[dict, dict, dict] | Exception, seconds: float, int_holdout: float) -> dict:
    """The record of one fit (``ok`` with its metrics, or ``failed`` with the error), saved."""
    record = {"method": method, "method_key": method_key, "split": split, "task": index,
              "config": config.model_dump(mode="json"), "int_holdout": int_holdout}
    if isinstance(outcome, Exception):  # recorded, by design: see fit_baseline_task
        arrays = None
        notes = [n for n in getattr(outcome, "__notes__", []) if not n.startswith("raised in the fit process")]
        record.update(status="failed", error="\n".join([f"{type(outcome).__name__}: {outcome}", *notes]), metrics={},
                      traceback="".join(traceback.format_exception(outcome, limit=5)))
        get_run_logger().warning("%s failed on %s[%d]: %s", method, split, index, record["error"])
    else:
        metrics, arrays, info = outcome
        # converged False: the report names the method "(not converged k/n)" (storage/report.py)
        record.update(status="ok", error=None, metrics=metrics, **info)
        if info.get("converged") is False:
            get_run_logger().warning("%s on %s[%d] did not converge: %s", method, split, index, info["convergence"])
    record["wall_s"] = seconds
    results.save(method_key, split, index, record, arrays)
    return record
