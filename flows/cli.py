"""The ``causalmeta`` command line. Heavy imports (prefect, torch, mlflow) happen inside commands."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="causalmeta: amortized causal inference, benchmarked against Bayesian causal discovery",
                  no_args_is_help=True, add_completion=False)

ROOT_HELP = "data root (Zarr stores, checkpoints, local MLflow); env CAUSALMETA_ROOT"


def _root(root: Optional[str]) -> str:
    return root or os.environ.get("CAUSALMETA_ROOT", ".causalmeta")


def _quiet_env() -> None:
    for k, v in {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
                 "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}.items():
        os.environ.setdefault(k, v)


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def generate(config: Path = typer.Argument(..., help="prior config YAML (e.g. configs/priors/lin-3node.yaml)"),
             root: Optional[str] = typer.Option(None, help=ROOT_HELP),
             workers: int = typer.Option(2, help="Dask workers")) -> None:
    """Generate a prior into its content-hashed Zarr store (resumes; no work when complete); print the path."""
    _quiet_env()
    from flows.spec import load_prior

    try:
        cfg = load_prior(str(config))
    except ValueError as exc:
        _fail(str(exc))
    from flows.generate import generate_prior

    typer.echo(generate_prior(cfg, _root(root), workers))


@app.command()
def train(method: str = typer.Argument("mace-tnp"),
          prior: str = typer.Option(..., help="shipped prior name, config YAML or store path"),
          steps: int = typer.Option(300), batch_size: int = typer.Option(16),
          device: str = typer.Option("auto", help="auto | cpu | cuda"),
          preset: Optional[str] = typer.Option(None, help="model size preset, e.g. cpu-small, paper-3node"),
          force: bool = typer.Option(False, help="retrain even if a model for this prior hash is registered"),
          root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """Meta-train an amortized method on a prior; register it in MLflow as causalmeta-<method>."""
    _quiet_env()
    if not prior.rstrip("/").endswith(".zarr"):  # a config is refused before the flow (and its server) starts
        from flows.spec import load_prior

        try:
            load_prior(prior)
        except ValueError as exc:
            _fail(f"--prior: {exc}")
    from flows.train import meta_train

    typer.echo(json.dumps(meta_train(method=method, prior=prior, root=_root(root), steps=steps,
                                     batch_size=batch_size, device=device, preset=preset, force=force), indent=1))


@app.command()
def predict(method: str = typer.Argument("mace-tnp"),
            model: str = typer.Option("latest", help="registered version number or 'latest'"),
            data: str = typer.Option(..., help="prior store path (*.zarr)"),
            task: int = typer.Option(0, help="test task index"),
            root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """Predict the interventional distributions of one stored test task; print summary statistics."""
    _quiet_env()
    from pipeline_lib.evaluation import MaceTNPPredictor, make_queries, restrict, task_slice
    from storage.prior_store import PriorStore
    from storage.tracking import Tracker

    net = Tracker(_root(root)).load_registered_model(method, model if model == "latest" else int(model))
    t = task_slice(PriorStore.open(data).read("test", task, task + 1), 0)
    q = make_queries(t)
    pred = MaceTNPPredictor(net, restrict(t)["x_obs"])
    mog = pred._mog(q)
    lo, hi = pred.intervals(q, (0.9,))[0.9]
    logp = pred.log_density(q)
    from rich.console import Console
    from rich.table import Table

    tab = Table(title=f"{method} ({model}) on test task {task}: q(x_i | do(x_j = a), D_obs)")
    for c in ("j", "a", "i", "pred mean", "pred sd", "90% interval", "true mean", "NLPID/sample"):
        tab.add_column(c)
    sd = mog.var.sqrt().cpu().numpy()
    for k in range(len(q)):
        tab.add_row(str(q.j[k]), f"{q.a[k]:.3f}", str(q.i[k]), f"{float(mog.mean[k]):.3f}", f"{sd[k]:.3f}",
                    f"[{lo[k]:.2f}, {hi[k]:.2f}]", f"{q.samples[k].mean():.3f}", f"{-logp[k].mean():.3f}")
    Console().print(tab)


@app.command()
def baseline(method: str = typer.Argument(..., help="exact | dibs | dibs-joint | bacadi | dcdi | dcdi-unknown | empty-graph"),
             prior: str = typer.Option(..., help="prior store path (*.zarr)"),
             tasks: int = typer.Option(10, help="number of test tasks"),
             workers: int = typer.Option(2), root: Optional[str] = typer.Option(None, help=ROOT_HELP),
             set_: Optional[list[str]] = typer.Option(
                 None, "--set", help="config override KEY=VALUE (YAML value), repeatable: --set steps=300")) -> None:
    """Fit a baseline on the test tasks of a stored prior (parallel on Dask); print its metrics."""
    _quiet_env()
    from pipeline_lib.baselines.registry import BaselineConfigError, UnknownMethodError, check_baseline, check_config

    try:
        check_baseline(method)
        config = check_config(method, _parse_overrides(set_ or []))
    except (UnknownMethodError, BaselineConfigError) as exc:
        _fail(str(exc))
    from flows.baselines import run_baselines
    from flows.spec import BaselineRun
    from storage.prior_store import PriorStore
    from storage.report import metric_arrays

    try:  # a missing or broken store is refused before the flow (and its server) starts
        PriorStore.open(prior)
    except (FileNotFoundError, ValueError) as exc:
        _fail(f"--prior: {exc}")
    recs = run_baselines(prior, [BaselineRun(name=method, config=config)], tasks, _root(root), workers)
    from pipeline_lib.metrics import comparison_table
    from rich.console import Console

    arrays = {k: {m: v for m, v in a.items() if not m.startswith("coverage")} for k, a in metric_arrays(recs).items()}
    Console().print(comparison_table(arrays).to_rich(title=f"{method} on {Path(prior).name}"))
    for key, rs in recs.items():
        for r in rs:
            if r["status"] != "ok":
                typer.secho(f"task {r['task']} failed: {r['error']}", fg="yellow")


def _parse_overrides(items: list[str]) -> dict:
    """``["steps=300", "hidden=[8, 8]"]`` -> ``{"steps": 300, "hidden": [8, 8]}`` (values as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            _fail(f"--set {key.strip()}: value {value!r} is not valid YAML ({exc.__class__.__name__})")
    return out


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    con = Console()
    for prior, md in summary["tables"].items():
        con.rule(f"prior {prior}: mean ± s.e. over test tasks, best in bold, p = Welch's t-test vs best")
        con.print(Markdown(md))
    con.print(f"report: {summary['html']}")
    con.print(f"MLflow run: {summary['run_id']} (tracking URI: {summary.get('tracking_uri', '')})")
    con.print(f"total: {summary.get('seconds', float('nan')):.0f} s")


@app.command()
def benchmark(preset: str = typer.Option("quick", help="preset in configs/benchmarks/"),
              spec: Optional[Path] = typer.Option(None, help="a BenchmarkSpec YAML instead of a preset"),
              root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """Run the end-to-end benchmark flow; print the comparison table and where the report is."""
    _quiet_env()
    from flows.spec import load_preset, load_spec

    try:
        bspec = load_spec(spec) if spec else load_preset(preset)
    except ValueError as exc:  # SpecError: one line naming the file and line
        _fail(str(exc))
    from flows.benchmark import benchmark as run
    from storage.tracking import tracking_uri

    summary = run(spec=bspec, root=_root(root))
    summary["tracking_uri"] = tracking_uri(_root(root))
    _print_summary(summary)


@app.command()
def demo(root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """The main job: the quick benchmark on the embedded defaults."""
    benchmark(preset="quick", spec=None, root=root)


@app.command()
def status(root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """Stored priors, registered models (current or stale) and the last benchmark results."""
    _quiet_env()
    from rich.console import Console
    from rich.table import Table

    from storage.prior_store import PriorStore

    r = Path(_root(root))
    con = Console()
    tab = Table(title=f"Priors under {r / 'priors'}")
    for c in ("name", "hash", "complete", "tasks train/val/test", "path"):
        tab.add_column(c)
    hashes = {}
    for p in sorted((r / "priors").glob("*.zarr")):
        try:
            s = PriorStore.open(p, allow_incomplete=True)
            hashes[s.hash] = s.config.name
            tab.add_row(s.config.name, s.hash[:12], "yes" if s.is_complete else "no (resumable)",
                        "/".join(str(s.n_tasks(x)) for x in ("train", "val", "test")), str(p))
        except Exception as exc:  # a broken store is shown, not fatal
            tab.add_row(p.name, "?", f"unreadable: {exc}", "", str(p))
    con.print(tab)
    from storage.tracking import Tracker

    models = Tracker(str(r)).list_registered_models()
    mt = Table(title="Registered models")
    for c in ("model", "version", "prior", "prior hash", "state"):
        mt.add_column(c)
    for m in models:
        state = "current" if m["prior_hash"] in hashes else "stale (no stored prior with this hash)"
        mt.add_row(m["name"], str(m["version"]), m.get("prior_name", ""), m["prior_hash"][:12], state)
    con.print(mt)
    reports = sorted((r / "reports").glob("*/report.html"), key=lambda p: p.stat().st_mtime)
    if reports:
        last = reports[-1].parent
        con.print(f"last benchmark report: {reports[-1]}")
        from rich.markdown import Markdown

        for md in sorted(last.glob("*-table.md")):
            con.rule(md.stem.removesuffix("-table"))
            con.print(Markdown(md.read_text()))


@app.command()
def report(run_id: str = typer.Argument(..., help="MLflow run id of a benchmark run"),
           out: Optional[Path] = typer.Option(None, help="output folder (default <root>/reports/<run_id>-regen)"),
           root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """Regenerate the HTML report of a benchmark run from its MLflow artifacts."""
    _quiet_env()
    from storage.report import write_report
    from storage.tracking import Tracker

    data = json.loads(Tracker(_root(root)).download_artifact_text(run_id, "records.json"))
    dest = out or Path(_root(root)) / "reports" / f"{run_id}-regen"
    rep = write_report(dest, data["sections"], title=f"causalmeta benchmark (run {run_id})", meta=data["meta"])
    typer.echo(rep["html"])


def main() -> None:
    app()
