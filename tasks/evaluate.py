"""Prefect tasks of the evaluation stage: score amortized models, publish the report to MLflow."""
from __future__ import annotations

import json
import re
import traceback
from pathlib import Path

from prefect import get_run_logger, task

from pipeline_lib.evaluation import evaluate_amortized, evaluate_amortized_many
from pipeline_lib.taskdata import task_slice
from storage.prior_store import PriorStore
from storage.results import ResultStore

__all__ = ["amortized_key", "score_amortized_task", "publish_report_task"]


@task(retries=2, retry_delay_seconds=[1, 4], persist_result=False, task_run_name="score-{method}-v{version}")
def score_amortized_task(store_path: str, root: str, method: str, version: str, n_tasks: int,
                         max_queries: int | None, seed: int, int_holdout: float = 0.0) -> list[dict]:
    """Score registered model ``causalmeta-<method>`` version ``version`` on the test tasks.

    Records are keyed by (model version, prior hash): an existing ok record is reused. The
    tasks still to score are read at once and answered in one batched inference pass
    (``evaluate_amortized_many``); if that fails, each is scored alone so that only the
    failing tasks are recorded as failed. ``int_holdout``: the model answers from the seen
    interventional rows and NLPID scores the held-out ones, as for the baselines
    (``pipeline_lib.taskdata.holdout_int_rows``); the key then names it (``-h0.5``).
    """
    from storage.tracking import Tracker

    key = amortized_key(method, version, int_holdout)
    results = ResultStore.for_store(root, store_path)
    store = PriorStore.open(store_path)
    n = min(n_tasks, store.n_tasks("test"))
    records = [results.load(key, "test", t) for t in range(n)]
    todo = [t for t, rec in enumerate(records) if rec is None or rec.get("status") != "ok"]
    if todo:
        model = Tracker(root).load_registered_model(method, int(version))
        try:  # one read and one batched inference pass over every task still to score
            batch = store.read("test", min(todo), max(todo) + 1)
            tasks = [task_slice(batch, t - min(todo)) for t in todo]
            scored = evaluate_amortized_many(method, model, tasks, max_queries=max_queries,
                                             seeds=[seed + t for t in todo], int_holdout=int_holdout)
        except Exception:  # some task is bad (damaged chunk, bad data): one by one, so only it fails
            scored = [_score_one(store, method, model, t, max_queries, seed + t, int_holdout) for t in todo]
        for t, result in zip(todo, scored):
            rec = {"method": method, "method_key": key, "split": "test", "task": t, "version": version,
                   "int_holdout": int_holdout}
            if isinstance(result, BaseException):
                arrays = None
                rec.update(status="failed", error=f"{type(result).__name__}: {result}", metrics={},
                           traceback="".join(traceback.format_exception(result, limit=5)))
                get_run_logger().warning("%s failed on test[%d]: %s", key, t, rec["error"])
            else:
                metrics, arrays = result
                rec.update(status="ok", error=None, metrics=metrics)
            results.save(key, "test", t, rec, arrays)
            records[t] = rec
    return records


def amortized_key(method: str, version: str | int, int_holdout: float = 0.0) -> str:
    """Result key of a registered model version; a held-out share of interventional rows is
    part of it (other rows scored: other numbers)."""
    return f"{method}-v{version}" + (f"-h{int_holdout:g}" if int_holdout else "")


def _score_one(store, method, model, t, max_queries, seed, int_holdout):
    """``evaluate_amortized`` of test task ``t`` alone, or the exception it raised."""
    try:
        task = task_slice(store.read("test", t, t + 1), 0)
        return evaluate_amortized(method, model, task, max_queries=max_queries, seed=seed, int_holdout=int_holdout)
    except Exception as exc:  # recorded with its traceback, never dropped
        return exc


@task(retries=2, retry_delay_seconds=[2, 8], persist_result=False)
def publish_report_task(root: str, experiment: str, sections: dict, meta: dict, run_name: str,
                        stores: dict[str, str] | None = None, models: dict[str, list[dict]] | None = None) -> dict:
    """Write the HTML report; log it, the tables, plots and every metric to one MLflow parent run.

    The parent run carries every metric as ``<prior>.<method>.<metric>`` and, for MLflow's
    compare view, one child run per method (``mlflow.parentRunId``) carries that method's
    metrics under the same names in every child (``nlpid``, ``e_shd``; ``<prior>.nlpid`` when
    the benchmark has several priors). Every run logs the test split of each prior it scored
    as an input dataset (``stores``: {prior label: store path}); a child of a trained model
    is tagged with the model version and its training run (``models``: meta_train results by
    prior label), so the lineage reads prior -> training run -> model version -> score.
    """
    from storage.report import headline_markdown, write_report
    from storage.tracking import Tracker

    stores, models = stores or {}, models or {}
    tracker = Tracker(root, experiment)
    with tracker.start_run(run_name=run_name, tags={"kind": "benchmark"}):
        run_id = tracker.run_id
        out_dir = Path(root) / "reports" / run_id
        rep = write_report(out_dir, sections, title=f"causalmeta benchmark {meta.get('spec', experiment)}",
                           meta={**meta, "mlflow_run_id": run_id})
        # the raw per-task records travel with the run, so `causalmeta report RUN_ID` can rebuild it
        (out_dir / "records.json").write_text(json.dumps({"sections": sections, "meta": meta}, default=float))
        tracker.log_params({k: v for k, v in meta.items()})
        # the table first: the run page shows a description's first lines until "Show more"
        tracker.describe_run("\n".join(
            [f"**{prior}**\n\n{headline_markdown(t.to_records())}" for prior, t in rep["tables"].items()]
            + [f"Mean ± s.e. over test tasks, **best**, * p<0.05, ** p<0.01 worse than the best (Welch's t-test). "
               f"Benchmark `{meta.get('spec', experiment)}`: one child run per method; every metric in the "
               "child runs and in the report, the artifact `report.html`."]))
        for store in stores.values():
            tracker.log_store_input(store, "test", "test")
        per_method: dict[str, dict[str, float]] = {}
        for prior, recs in sections.items():
            prefix = f"{prior}." if len(sections) > 1 else ""
            for method, arrays in rep["arrays"][prior].items():
                child = per_method.setdefault(_method_name(method), {})
                for metric, values in arrays.items():
                    finite = values[values == values]
                    if len(finite):
                        tracker.log_metrics({f"{prior}.{method}.{metric}": float(finite.mean())})
                        child[prefix + metric] = float(finite.mean())
                n_failed = sum(r.get("status") != "ok" for r in recs[method])
                tracker.log_metrics({f"{prior}.{method}.n_failed": float(n_failed)})
                child[prefix + "n_failed"] = float(n_failed)
                child[prefix + "n_tasks"] = float(len(recs[method]))
        for p in sorted(out_dir.iterdir()):
            tracker.log_artifact(p)
        children = {}
        for name, metrics in per_method.items():
            trained = [m for ms in models.values() for m in ms if m.get("method") == name]
            tags = {"kind": "benchmark-method", "method": name, "benchmark_run": run_id,
                    **({"model_versions": ",".join(sorted({str(m["version"]) for m in trained}))} if trained else {}),
                    **({"model_runs": ",".join(sorted({m["run_id"] for m in trained if m.get("run_id")}))}
                       if any(m.get("run_id") for m in trained) else {})}
            with tracker.child_run(run_name=name, tags=tags):
                children[name] = tracker.run_id
                tracker.describe_run(f"`{name}` in benchmark run `{run_id}`"
                                     + (f", registered model `causalmeta-{name}` version {tags['model_versions']}"
                                        f" (training run `{tags.get('model_runs', '?')}`)" if trained else "")
                                     + ". Metrics named as in every other method's run: compare them side by side.")
                for store in stores.values():
                    tracker.log_store_input(store, "test", "test")
                tracker.log_metrics(metrics)
        experiment_id = tracker.experiment_id()
    tables = {prior: t.to_markdown() for prior, t in rep["tables"].items()}
    return {"run_id": run_id, "html": str(rep["html"]), "tables": tables, "experiment_id": experiment_id,
            "child_runs": children, "mlflow_url": tracker.run_url(run_id, experiment_id),
            "records": {p: t.to_records() for p, t in rep["tables"].items()}}


def _method_name(label: str) -> str:
    """``"mace-tnp v3"`` -> ``"mace-tnp"``: one child run per method, whatever version each prior used."""
    return re.sub(r" v\d+$", "", label)
