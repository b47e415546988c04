"""Prefect tasks of the imported-data stage: import a table, score a method on held-out regimes, publish.

Thin wrappers: the import is ``storage.importing``, the split and the scores are
``pipeline_lib.holdout``, the report is ``storage.report``.
"""
from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from pydantic import BaseModel

from pipeline_lib.holdout import check_node_range, score_heldout, seen_task
from pipeline_lib.posterior import capabilities
from pipeline_lib.taskdata import restrict
from storage.importing import DataStore, prior_node_range

__all__ = ["import_task", "method_node_ranges", "publish_dataset_report", "score_on_dataset"]


@task(persist_result=False, task_run_name="import-{name}")
def import_task(source: str, root: str, name: str, options: dict[str, Any]) -> str:
    """Import ``source`` into ``<root>/data`` (storage.importing.import_dataset); the store path."""
    from storage.importing import import_dataset

    return import_dataset(source, root, name, **options).path


def method_node_ranges(root: str, methods: list[tuple[str, str]], baselines: list[str]) -> dict[str, tuple]:
    """{label: (lo, hi)} of the node range each chosen method supports (None: unbounded).

    Amortized ``(method, version)``: the node range of the prior the registered version was
    trained on (its ``prior_hash`` tag, looked up among ``<root>/priors``); a prior that is not
    stored here is skipped (no range known). Baselines: their registry entry's ``max_nodes``.
    """
    from pipeline_lib.baselines.registry import get_baseline
    from storage.tracking import Tracker

    out: dict[str, tuple] = {}
    for b in baselines:
        hi = get_baseline(b).max_nodes
        if hi is not None:
            out[b] = (1, hi)
    if methods:
        versions = {(m["method"], str(m["version"])): m for m in Tracker(root).list_registered_models()}
        for method, version in methods:
            v = version if version != "latest" else str(max(
                (int(k[1]) for k in versions if k[0] == method), default=0))
            m = versions.get((method, v))
            if m is None:
                have = sorted(int(k[1]) for k in versions if k[0] == method)
                raise ValueError(f"method {method}:{version}: no registered model causalmeta-{method} version "
                                 f"{v if v != '0' else '(any)'} under {root} (registered: {have or 'none'}); "
                                 f"train one with `causalmeta train {method}`")
            found = prior_node_range(root, m["prior_hash"]) if m.get("prior_hash") else None
            if found is not None:
                out[f"{method} v{v} (trained on prior {found[0]})"] = (found[1], found[2])
    return out


def check_ranges(ranges: dict[str, tuple], d: int) -> None:
    """Refuse the run before any fit when a chosen method does not support ``d`` variables."""
    for label, (lo, hi) in ranges.items():
        check_node_range(label, lo, hi, d)


@task(persist_result=False, task_run_name="holdout-{label}")
def score_on_dataset(store_path: str, root: str, label: str, kind: str, name: str, config: BaseModel | None,
                     version: str, held_out: list[int], seed: int, out_dir: str) -> list[dict]:
    """Fit (baseline) or query (amortized ``name`` at ``version``) on the seen part of the data;
    one record per held-out regime, in the order of ``held_out``.

    A failure is recorded (``status: failed`` with the error) in every record of the method,
    never raised: one failing method does not stop the others. Graph answers get an edge
    heat map (PNG + HTML) in ``out_dir``; a fit that did not converge is flagged in its records.
    """
    ds = DataStore.open(store_path)
    t = ds.task()
    labels = ds.regime_labels
    base = [{"method": label, "task": int(k), "regime": labels[k], "split": "holdout"} for k in held_out]
    try:
        seen = seen_task(t, held_out, seed)
        t0 = time.perf_counter()
        if kind == "baseline":
            from pipeline_lib.baselines.registry import convergence_of, fit_baseline, get_baseline

            spec = get_baseline(name)
            unknown = [labels[k] for k in range(len(labels)) if k not in held_out and not t["targets_known"][k]]
            if "int_targets" in spec.sees and unknown:
                raise ValueError(f"{name} is given the intervention targets, but regime(s) {', '.join(unknown)} have "
                                 "unknown targets; choose a method that infers them (dcdi-unknown, bacadi) or hold "
                                 "those regimes out")
            answer = fit_baseline(name, restrict(seen), config)
            converged, note = convergence_of(name, answer)
        else:
            from pipeline_lib.models.registry import get_method
            from storage.tracking import Tracker

            model = Tracker(root).load_registered_model(name, version if version == "latest" else int(version))
            answer = get_method(name).predict(model, seen)
            converged, note = True, "amortized: no per-dataset fit"
        runtime = time.perf_counter() - t0  # fit (baselines) or load + predict (amortized)
        scores = [{"runtime_s": runtime, **m} for m in score_heldout(answer, t, held_out, seed, seen)]
        extra: dict[str, Any] = {"converged": converged, "convergence": note,
                                 "answers": sorted(capabilities(answer))}
        if "graph" in capabilities(answer):
            from storage.report import edge_heatmap

            probs = answer.edge_probs()
            paths = edge_heatmap(probs, ds.node_names, out_dir, f"edges-{label}", f"{label}: edge probabilities",
                                 note=None if converged is not False else f"NOT CONVERGED: {note}")
            extra.update(edge_probs=probs.tolist(), heatmap={k: str(v) for k, v in paths.items()})
        if "targets" in capabilities(answer):
            extra["target_probs"] = answer.intervention_target_probs().tolist()
        records = [{**b, "status": "ok", "error": None, "metrics": m, **extra} for b, m in zip(base, scores)]
    except Exception as exc:  # recorded, by design: see docstring
        get_run_logger().warning("%s failed on %s: %s", label, ds.name, exc)
        records = [{**b, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "metrics": {},
                    "traceback": traceback.format_exc(limit=5)} for b in base]
    return records


@task(persist_result=False)
def publish_dataset_report(root: str, store_path: str, records: dict[str, list[dict]], meta: dict,
                           experiment: str = "datasets") -> dict:
    """HTML report (tables, NLPID / calibration plots, heat maps) logged to one MLflow run; the summary."""
    from storage.report import headline_markdown, write_report
    from storage.tracking import Tracker
    from tasks.artifacts import artifact_key, publish_markdown

    ds = DataStore.open(store_path)
    tracker = Tracker(root, experiment)
    with tracker.start_run(run_name=f"evaluate-dataset-{ds.name}", tags={"kind": "evaluate-dataset",
                                                                       "dataset": ds.label}):
        run_id = tracker.run_id
        out_dir = Path(root) / "reports" / run_id
        rep = write_report(out_dir, {ds.label: records}, title=f"causalmeta: held-out regimes of {ds.name}",
                           meta={**meta, "mlflow_run_id": run_id}, section="Dataset", unit="held-out regimes")
        html = rep["html"].read_text()
        maps = [r["heatmap"]["png"] for recs in records.values() for r in recs[:1] if r.get("heatmap")]
        if maps:  # heat maps under the table, with node names
            import base64

            imgs = "".join(f'<h3>{Path(p).stem}</h3><img src="data:image/png;base64,'
                           f'{base64.b64encode(Path(p).read_bytes()).decode()}"/>' for p in maps)
            rep["html"].write_text(html.replace("</body>", f"<h2>Edge probabilities</h2>{imgs}</body>"))
        for recs in records.values():  # the heat maps travel with the report
            for r in recs[:1]:
                for path in (r.get("heatmap") or {}).values():
                    if Path(path).is_file() and Path(path).parent != out_dir:
                        shutil.copy(path, out_dir / Path(path).name)
        (out_dir / "records.json").write_text(json.dumps({"records": records, "meta": meta}, default=float))
        table = rep["tables"][ds.label]
        md = headline_markdown(table.to_records())
        tracker.describe_run(f"**{ds.label}**: NLPID of held-out regimes ({', '.join(meta['holdout'])})\n\n{md}")
        tracker.log_params({k: v for k, v in meta.items()})
        for method, arrays in rep["arrays"][ds.label].items():
            for metric, values in arrays.items():
                finite = values[values == values]
                if len(finite):
                    tracker.log_metrics({f"{method}.{metric}": float(finite.mean())})
        for p in sorted(out_dir.iterdir()):
            tracker.log_artifact(p)
        experiment_id = tracker.experiment_id()
    publish_markdown(artifact_key("evaluate-dataset", ds.name), md, f"held-out regimes of {ds.label}")
    return {"run_id": run_id, "html": str(rep["html"]), "records": {ds.label: table.to_records()},
            "mlflow_url": tracker.run_url(run_id, experiment_id), "table": md}
