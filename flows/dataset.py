"""Flows over users' own data: ``import-dataset`` and ``evaluate-dataset``.

``evaluate-dataset`` reads the diagram of issue 17: held-out regimes chosen -> node ranges
checked -> every method fitted (baselines) or queried (amortized, no retraining) on the
observational rows and the other regimes -> NLPID and calibration on the real rows of each
held-out regime (pipeline_lib.holdout) -> one report + MLflow run + Prefect artifact.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.runtime import check_root
from flows.spec import BaselineRun
from pipeline_lib.holdout import select_holdout
from storage.importing import DataStore
from tasks.dataset import check_ranges, import_task, method_node_ranges, publish_dataset_report, score_on_dataset

__all__ = ["DEFAULT_BASELINES", "evaluate_dataset", "import_dataset_flow", "parse_method"]

DEFAULT_BASELINES = ("empty-graph", "dcdi")


def parse_method(text: str) -> tuple[str, str]:
    """``"mace-tnp"`` -> ``("mace-tnp", "latest")``; ``"mace-tnp:3"`` -> ``("mace-tnp", "3")``."""
    from pipeline_lib.models.registry import get_method

    name, _, version = str(text).partition(":")
    get_method(name.strip())
    version = version.strip() or "latest"
    if version != "latest" and not version.isdigit():
        raise ValueError(f"method {text!r}: the version after ':' must be a number or 'latest'")
    return name.strip(), version


def _run_name() -> str:
    from prefect.runtime import flow_run

    store = str(flow_run.parameters.get("store", "")).rstrip("/")
    return f"evaluate-dataset-{Path(store).stem.rsplit('-', 1)[0] or 'data'}"


@flow(name="import-dataset")
def import_dataset_flow(source: str, name: str, root: str = ".causalmeta", options: dict[str, Any] | None = None) -> str:
    """Import a CSV / Parquet / h5ad table (path or fsspec URL) into ``<root>/data``; the store path."""
    return import_task(source, check_root(root), name, options or {})


@flow(name="evaluate-dataset", flow_run_name=_run_name)
def evaluate_dataset(store: str, holdout_regimes: str = "all", baselines: list[BaselineRun] | None = None,
                     methods: list[str] | None = None, root: str = ".causalmeta", seed: int = 0,
                     experiment: str = "datasets") -> dict:
    """Score every chosen method on the held-out regimes of an imported dataset; the summary.

    Methods see the observational rows and the regimes not held out; each held-out regime with
    one known target is scored by the NLPID of its real rows under the method's predicted
    interventional law, plus calibration (and graph metrics when the data has a reference
    graph). Returns ``records`` (comparison records by dataset), ``html``, ``run_id``.

    Args:
        store: imported data store, <root>/data/<name>-<hash12>.zarr (path or fsspec URL)
        holdout_regimes: 'all' (every regime with one known target) or regime labels R1,R2
        baselines: baselines and their config overrides (default: empty-graph, dcdi)
        methods: registered amortized models, 'method' or 'method:version' (default version: latest)
        root: data root (models, priors, reports, MLflow)
        seed: seed of the row subsets, Monte Carlo densities and fits
        experiment: MLflow experiment of the run
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    root = check_root(root)
    ds = DataStore.open(store)
    task = ds.task()
    held = select_holdout(task, ds.regime_labels, holdout_regimes)
    runs = [BaselineRun.model_validate(b) for b in (baselines if baselines is not None else
                                                    [{"name": n} for n in DEFAULT_BASELINES])]
    amortized = [parse_method(m) for m in methods or []]
    check_ranges(method_node_ranges(root, amortized, [b.name for b in runs]), ds.d)  # before any fit
    logger.info("%s: %d variables, %d observational rows, holding out %s", ds.label, ds.d, ds.attrs["n_obs"],
                ", ".join(ds.regime_labels[k] for k in held))
    out_dir = str(Path(root) / "reports" / f"{ds.label}-maps")
    futures = {}
    for b in runs:
        futures[b.name] = score_on_dataset.submit(ds.path, root, b.name, "baseline", b.name, b.typed_config,
                                                  "", held, seed, out_dir)
    for name, version in amortized:
        label = f"{name} v{version}" if version != "latest" else name
        futures[label] = score_on_dataset.submit(ds.path, root, label, "amortized", name, None, version, held,
                                                 seed, out_dir)
    records = {label: f.result() for label, f in futures.items()}
    for label, recs in records.items():
        if recs and recs[0]["status"] != "ok":
            logger.warning("%s failed: %s", label, recs[0]["error"])
    meta = {"dataset": ds.label, "store": ds.path, "holdout": [ds.regime_labels[k] for k in held],
            "variables": ds.d, "observational_rows": int(ds.attrs["n_obs"]), "seed": seed}
    summary = publish_dataset_report(root, ds.path, records, meta, experiment)
    summary["seconds"] = time.perf_counter() - t0
    summary["failed"] = {label: recs[0]["error"] for label, recs in records.items()
                         if recs and recs[0]["status"] != "ok"}
    summary["convergence"] = {label: recs[0].get("convergence") for label, recs in records.items()
                              if recs and recs[0].get("converged") is False}
    return summary
