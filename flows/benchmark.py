"""The end-to-end benchmark: generate -> meta-train -> baselines -> evaluate -> report.

    BenchmarkSpec ──> for each prior:
        generate_prior (Dask, content-hashed Zarr; reused when complete)
        meta_train     (per method; reused when a registered model carries the prior hash)
        run_baselines  (Dask, one task per (baseline, test task); failures recorded)
        evaluate       (same queries for every method; records keyed by version x prior)
    ──> publish_report (comparison tables, plots, HTML; metrics + artifacts on one MLflow run)
"""
from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger

from flows.baselines import run_baselines
from flows.evaluate import evaluate
from flows.generate import generate_prior
from flows.spec import BenchmarkSpec, load_preset
from flows.train import meta_train
from storage.results import config_key
from tasks.evaluate import publish_report_task

__all__ = ["benchmark"]


@flow(name="benchmark")
def benchmark(spec: BenchmarkSpec | None = None, preset: str | None = "quick", root: str = ".causalmeta") -> dict:
    """Run a benchmark spec (or a shipped preset); return the report summary.

    Returns ``{"run_id", "html", "tables": {prior: markdown}, "records", "models"}``.
    """
    logger = get_run_logger()
    spec = spec if spec is not None else load_preset(preset or "quick")
    spec = BenchmarkSpec.model_validate(spec)
    root = str(Path(root).resolve())
    t0 = time.perf_counter()
    sections, models_by_prior = {}, {}
    for config in spec.prior_configs():
        store = generate_prior(config, root, spec.n_workers)
        models = [meta_train(method=m.name, prior=store, root=root, steps=m.steps, batch_size=m.batch_size,
                             lr=m.lr, device=m.device, preset=m.preset, model=m.model, force=spec.force_retrain,
                             seed=spec.seed, data=m.data) for m in spec.methods]
        keys = {config_key(b.name, b.config): b.name for b in spec.baselines}
        if spec.baselines:
            run_baselines(store, spec.baselines, spec.n_test_tasks, root, spec.n_workers,
                          spec.max_queries_per_task, spec.seed)
        label = f"{config.name}-{config.content_hash()[:8]}"
        sections[label] = evaluate(store, models, keys, spec.n_test_tasks, root, spec.max_queries_per_task, spec.seed)
        models_by_prior[label] = models
        logger.info("prior %s evaluated (%.0fs elapsed)", label, time.perf_counter() - t0)
    meta = {"spec": spec.name, "priors": ",".join(sections), "n_test_tasks": spec.n_test_tasks,
            "methods": ",".join(m.name for m in spec.methods), "baselines": ",".join(b.name for b in spec.baselines)}
    summary = publish_report_task(root, f"benchmark-{spec.name}", sections, meta,
                                  run_name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    summary["models"] = models_by_prior
    summary["seconds"] = time.perf_counter() - t0
    for prior, md in summary["tables"].items():
        logger.info("comparison table for %s:\n%s", prior, md)
    return summary
