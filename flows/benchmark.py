"""The end-to-end benchmark: generate -> meta-train -> baselines -> evaluate -> report.

    BenchmarkSpec ──> for each prior:
        generate_prior (Dask, content-hashed Zarr; reused when complete)
        meta_train     (per method; reused when a registered model carries the prior hash)
        run_baselines  (Dask, one task per (baseline, test task); failures recorded)
        evaluate       (same queries for every method; records keyed by version x prior)
    ──> publish_report (comparison tables, plots, HTML; metrics + artifacts on one MLflow run)
"""
from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger

from flows.baselines import baseline_key, run_baselines
from flows.concurrency import training_locks
from flows.evaluate import evaluate
from flows.generate import generate_prior
from flows.present import format_cell, format_duration
from flows.runtime import check_root, dask_address
from flows.spec import BenchmarkSpec, PresetName, load_preset
from flows.train import meta_train
from tasks.artifacts import Progress, artifact_key, publish_markdown, publish_table
from tasks.evaluate import publish_report_task
from tasks.fitprocs import fit_processes

__all__ = ["benchmark", "spec_hash"]

# the Prefect UI renders artifact descriptions as markdown: asterisks escaped, one line
TABLE_LEGEND = (r"mean ± s.e. over test tasks; (best): best mean; \* p<0.05, \*\* p<0.01: worse than the best "
                r"(Welch's t-test over tasks); -: not answered by the method")


def spec_hash(spec: BenchmarkSpec) -> str:
    """First 8 hex of the sha256 of the spec's canonical JSON: names what a run runs."""
    return hashlib.sha256(BenchmarkSpec.model_validate(spec).model_dump_json().encode()).hexdigest()[:8]


def _run_name() -> str:
    """``benchmark-<spec name>-<spec hash>``, e.g. ``benchmark-quick-1f0c2a9e`` (the Prefect run's name)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    spec = params.get("spec") or load_preset(params.get("preset") or "quick")
    spec = BenchmarkSpec.model_validate(spec)
    return f"benchmark-{spec.name}-{spec_hash(spec)}"


@dataclass
class StageClock:
    """Stage-level progress: which stage ends, elapsed time, and an estimate of what is left.

    Each stage has an a-priori cost in seconds on 2 idle cores (``expected``, from the spec:
    training steps x batch, fits x test tasks, ...); the estimate of what is left scales the
    expected cost of the remaining stages by how fast the finished ones went (observed /
    expected), so a loaded machine gets a proportionally longer estimate. Stages that reuse a
    registered model take no time and are left out of that ratio.
    """

    stages: list[tuple[str, float]]  # (label, expected seconds)
    key: str
    t0: float = field(default_factory=lambda: time.perf_counter())  # looked up at call time (tests)
    done: int = 0
    observed: float = 0.0
    expected_done: float = 0.0

    def __post_init__(self) -> None:
        self.progress = Progress(self.key, len(self.stages), "benchmark stages done")
        self._started = self.t0

    def left(self) -> float:
        scale = self.observed / self.expected_done if self.expected_done > 0 else 1.0
        return scale * sum(e for _, e in self.stages[self.done:])

    def finish(self, reused: bool = False) -> str:
        now = time.perf_counter()
        label, expected = self.stages[self.done]
        took = now - self._started
        self._started = now
        self.done += 1
        if not reused:
            self.observed += took
            self.expected_done += expected
        elapsed = now - self.t0
        left = f", about {format_duration(self.left())} left" if self.done < len(self.stages) else ""
        msg = (f"stage {self.done}/{len(self.stages)} {label} done in {format_duration(took)}; "
               f"elapsed {format_duration(elapsed)}{left}")
        self.progress.update(self.done, f"{label}; elapsed {format_duration(elapsed)}{left}")
        return msg


def _stage_plan(spec: BenchmarkSpec, configs) -> list[tuple[str, float]]:
    """(label, expected seconds on 2 idle cores) of every stage, in the order the flow runs them.

    Rough rates, chosen so the quick preset comes to ~3.5 min (it took 3:20 on 2 idle cores):
    ~50 ms per generated task and worker, ~12 ms per training example (steps x batch), ~4 s per
    baseline fit and worker, ~1 s per scored (model, task). Only the ratios matter once a
    stage has finished (see StageClock).
    """
    workers = max(1, spec.n_workers)
    out = []
    for c in configs:
        n_tasks = sum(c.n_tasks(s) for s in ("train", "val", "test"))
        out.append((f"generate {c.name}", 0.05 * n_tasks / workers))
        out += [(f"train {m.name} on {c.name}", 0.012 * m.steps * m.batch_size) for m in spec.methods]
        if spec.baselines:
            out.append((f"baselines on {c.name}", 4.0 * spec.n_test_tasks * len(spec.baselines) / workers))
        out.append((f"evaluate {c.name}", 1.0 * spec.n_test_tasks * max(1, len(spec.methods))))
    out.append(("report", 5.0))
    return out


@flow(name="benchmark", flow_run_name=_run_name)
def benchmark(spec: BenchmarkSpec | None = None, preset: PresetName | None = "quick", root: str = ".causalmeta") -> dict:
    """Run a benchmark spec (or a shipped preset); return the report summary.

    Returns ``{"run_id", "html", "tables": {prior: markdown}, "records", "models", "mlflow_url",
    "child_runs", "seconds"}``. Publishes, on the flow run: a table artifact with the comparison
    table (key ``benchmark-<name>-table``), a markdown artifact with links to the HTML report
    and the MLflow run (``benchmark-<name>``) and a progress artifact of the stages.

    ``preset`` is one of the shipped presets (a dropdown in the Prefect form); ``root`` must lie
    under ``$CAUSALMETA_ALLOWED_ROOTS`` when that is set, as it is in every served deployment.
    """
    logger = get_run_logger()
    spec = spec if spec is not None else load_preset(preset or "quick")
    spec = BenchmarkSpec.model_validate(spec)
    root = check_root(root)
    configs = spec.prior_configs()
    clock = StageClock(_stage_plan(spec, configs), artifact_key("benchmark", spec.name, "stages"))
    logger.info("benchmark %s (%s): %d stages, about %s on 2 idle cores", spec.name, spec_hash(spec),
                len(clock.stages), format_duration(clock.left()))
    sections, models_by_prior, stores = {}, {}, {}
    # the baseline stages' fit processes (tasks/fitprocs.py) start now: their imports overlap
    # generation and training instead of delaying the first fits
    warm = (fit_processes(spec.n_workers) if spec.baselines and spec.n_workers > 1 and not dask_address()
            else contextlib.nullcontext())
    with warm:
        for config in configs:
            # The store's causalmeta.prior.updated event names the methods trained here, and the
            # retrain trigger skips them: one meta-train run per (method, prior). The training locks
            # are taken before generation as a second line: a run started meanwhile for the same
            # (method, prior) by anyone waits for this training and reuses its model (flows/concurrency.py).
            with training_locks([m.name for m in spec.methods], config.content_hash(), logger, root):
                store = generate_prior(config, root, spec.n_workers, training=[m.name for m in spec.methods])
                logger.info(clock.finish())
                models = []
                for m in spec.methods:
                    models.append(meta_train(method=m.name, prior=store, root=root, steps=m.steps,
                                             batch_size=m.batch_size, lr=m.lr, device=m.device, preset=m.preset,
                                             model=m.model, force=spec.force_retrain, seed=spec.seed, data=m.data))
                    logger.info(clock.finish(reused=models[-1].get("reused", False)))
            keys = {baseline_key(b, spec.int_holdout): b.name for b in spec.baselines}
            if spec.baselines:
                run_baselines(store, spec.baselines, spec.n_test_tasks, root, spec.n_workers,
                              spec.max_queries_per_task, spec.seed, int_holdout=spec.int_holdout)
                logger.info(clock.finish())
            label = f"{config.name}-{config.content_hash()[:8]}"
            sections[label] = evaluate(store, models, keys, spec.n_test_tasks, root, spec.max_queries_per_task, spec.seed,
                                       spec.int_holdout)
            models_by_prior[label] = models
            stores[label] = store
            logger.info(clock.finish())
    meta = {"spec": spec.name, "spec_hash": spec_hash(spec), "priors": ",".join(sections),
            "n_test_tasks": spec.n_test_tasks, "int_holdout": spec.int_holdout,
            "methods": ",".join(m.name for m in spec.methods),
            "baselines": ",".join(b.name for b in spec.baselines)}
    summary = publish_report_task(root, f"benchmark-{spec.name}", sections, meta,
                                  run_name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}", stores=stores,
                                  models=models_by_prior)
    logger.info(clock.finish())
    summary["models"] = models_by_prior
    summary["seconds"] = time.perf_counter() - clock.t0
    _publish_artifacts(spec, summary, root)
    for prior, md in summary["tables"].items():
        logger.info("comparison table for %s:\n%s", prior, md)
    return summary


def comparison_rows(records: dict[str, list[dict]]) -> list[dict]:
    """Rows of the Prefect table artifact: one per (prior, method), every metric as ``mean±se`` + marker."""
    rows = []
    metrics = list(dict.fromkeys(r["metric"] for recs in records.values() for r in recs))  # same columns
    for prior, recs in records.items():
        by = {(r["method"], r["metric"]): r for r in recs}
        for method in dict.fromkeys(r["method"] for r in recs):
            row = {"prior": prior, "method": method}
            for k in metrics:
                txt, best = format_cell(by.get((method, k)))
                row[k] = txt.rstrip() + (" (best)" if best else "")
            rows.append(row)
    return rows


def links_markdown(spec: BenchmarkSpec, summary: dict, root: str) -> str:
    """The markdown artifact: where the report and the MLflow runs are, and how to open them."""
    from storage.tracking import Tracker

    html = Path(summary["html"])
    lines = [f"## Benchmark `{spec.name}` ({spec_hash(spec)})", "",
             f"- **HTML report**: [{html.name}]({html.as_uri()}) — `{html}` "
             "(also an artifact of the MLflow run, shown inline in its Artifacts tab)"]
    run = summary["run_id"]
    if summary.get("mlflow_url"):
        lines.append(f"- **MLflow run**: [{run}]({summary['mlflow_url']}) (parent run; one child run per method)")
    else:
        tracker = Tracker(root)
        lines += [f"- **MLflow run**: `{run}` in experiment `benchmark-{spec.name}` (parent run; one child run "
                  "per method) on the local backend; open it with", "",
                  f"  ```\n  {tracker.ui_command()}\n  ```", "",
                  f"  then http://127.0.0.1:5000/#/experiments/{summary.get('experiment_id', '')}/runs/{run}"]
    for name, child in summary.get("child_runs", {}).items():
        lines.append(f"  - `{name}`: run `{child}`")
    lines += ["", f"Total {format_duration(summary['seconds'])}. Comparison table: artifact "
              f"`benchmark-{spec.name}-table` ({TABLE_LEGEND})."]
    return "\n".join(lines) + "\n"


def _publish_artifacts(spec: BenchmarkSpec, summary: dict, root: str) -> None:
    publish_table(artifact_key("benchmark", spec.name, "table"), comparison_rows(summary["records"]),
                  description=f"benchmark {spec.name}: {TABLE_LEGEND}")
    publish_markdown(artifact_key("benchmark", spec.name), links_markdown(spec, summary, root),
                     description=f"benchmark {spec.name}: report and MLflow run")
