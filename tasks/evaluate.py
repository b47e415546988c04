"""Prefect tasks of the evaluation stage: score amortized models, publish the report to MLflow."""
from __future__ import annotations

import json
import traceback
from pathlib import Path

from prefect import get_run_logger, task

from pipeline_lib.evaluation import evaluate_amortized
from pipeline_lib.taskdata import task_slice
from storage.prior_store import PriorStore
from storage.results import ResultStore

__all__ = ["score_amortized_task", "publish_report_task"]


@task(retries=2, retry_delay_seconds=[1, 4], persist_result=False, task_run_name="score-{method}-v{version}")
def score_amortized_task(store_path: str, root: str, method: str, version: str, n_tasks: int,
                         max_queries: int | None, seed: int) -> list[dict]:
    """Score registered model ``causalmeta-<method>`` version ``version`` on the test tasks.

    Records are keyed by (model version, prior hash): an existing ok record is reused.
    """
    from storage.tracking import Tracker

    key = f"{method}-v{version}"
    results = ResultStore.for_store(root, store_path)
    store = PriorStore.open(store_path)
    n = min(n_tasks, store.n_tasks("test"))
    model = None
    records = []
    for t in range(n):
        rec = results.load(key, "test", t)
        if rec is None or rec.get("status") != "ok":
            if model is None:
                model = Tracker(root).load_registered_model(method, int(version))
            rec = {"method": method, "method_key": key, "split": "test", "task": t, "version": version}
            try:
                task_data = task_slice(store.read("test", t, t + 1), 0)
                metrics, arrays = evaluate_amortized(method, model, task_data, max_queries=max_queries, seed=seed + t)
                rec.update(status="ok", error=None, metrics=metrics)
            except Exception as exc:
                arrays = None
                rec.update(status="failed", error=f"{type(exc).__name__}: {exc}", metrics={},
                           traceback=traceback.format_exc(limit=5))
                get_run_logger().warning("%s failed on test[%d]: %s", key, t, rec["error"])
            results.save(key, "test", t, rec, arrays)
        records.append(rec)
    return records


@task(retries=2, retry_delay_seconds=[2, 8], persist_result=False)
def publish_report_task(root: str, experiment: str, sections: dict, meta: dict, run_name: str) -> dict:
    """Write the HTML report and log it, the tables, plots and every metric to one MLflow run."""
    from storage.report import write_report
    from storage.tracking import Tracker

    tracker = Tracker(root, experiment)
    with tracker.start_run(run_name=run_name, tags={"kind": "benchmark"}):
        run_id = tracker.run_id
        out_dir = Path(root) / "reports" / run_id
        rep = write_report(out_dir, sections, title=f"causalmeta benchmark {experiment}",
                           meta={**meta, "mlflow_run_id": run_id})
        # the raw per-task records travel with the run, so `causalmeta report RUN_ID` can rebuild it
        (out_dir / "records.json").write_text(json.dumps({"sections": sections, "meta": meta}, default=float))
        tracker.log_params({k: v for k, v in meta.items()})
        for prior, recs in sections.items():
            for method, arrays in rep["arrays"][prior].items():
                for metric, values in arrays.items():
                    finite = values[values == values]
                    if len(finite):
                        tracker.log_metrics({f"{prior}.{method}.{metric}": float(finite.mean())})
                n_failed = sum(r.get("status") != "ok" for r in recs[method])
                tracker.log_metrics({f"{prior}.{method}.n_failed": float(n_failed)})
        for p in sorted(out_dir.iterdir()):
            tracker.log_artifact(p)
    tables = {prior: t.to_markdown() for prior, t in rep["tables"].items()}
    return {"run_id": run_id, "html": str(rep["html"]), "tables": tables,
            "records": {p: t.to_records() for p, t in rep["tables"].items()}}
