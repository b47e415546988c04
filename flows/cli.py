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
          data: str = typer.Option("store", help="store: the stored train split (generated if needed) | "
                                                 "stream: fresh draws from the prior every step"),
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
                                     batch_size=batch_size, device=device, preset=preset, force=force,
                                     data=data), indent=1))


@app.command()
def predict(method: str = typer.Argument("mace-tnp", help="a registered amortized method or a baseline"),
            model: str = typer.Option("latest", help="registered version number or 'latest' (amortized methods)"),
            data: str = typer.Option(..., help="prior store path (*.zarr)"),
            task: int = typer.Option(0, help="task index in --split"),
            split: str = typer.Option("test", help="train | val | test"),
            set_: Optional[list[str]] = typer.Option(None, "--set", help="baseline config override KEY=VALUE"),
            root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """Answer one stored task with any registered method; print what it answers.

    Amortized methods load the registered model and answer in one pass; baselines are fitted
    on the task. One table per capability: graph, targets, interventional predictions,
    generated samples.
    """
    _quiet_env()
    from pipeline_lib.baselines.registry import BaselineConfigError, baseline_names, check_config
    from pipeline_lib.models.registry import METHODS, get_method
    from pipeline_lib.posterior import capabilities
    from pipeline_lib.taskdata import task_slice
    from storage.prior_store import PriorStore

    if method not in METHODS and method not in baseline_names():
        _fail(f"method '{method}' is unknown; amortized: {', '.join(METHODS)}; "
              f"baselines: {', '.join(baseline_names())}")
    try:
        store = PriorStore.open(data)
        n = store.n_tasks(split)
        if not 0 <= task < n:
            _fail(f"--task {task}: split '{split}' of {Path(data).name} has tasks 0..{n - 1}")
        t = task_slice(store.read(split, task, task + 1), 0)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        _fail(f"--data: {exc}")
    if method in METHODS:
        from storage.tracking import Tracker

        net = Tracker(_root(root)).load_registered_model(method, model if model == "latest" else int(model))
        answer = get_method(method).predict(net, t)
        label = f"{method} ({model})"
    else:
        from pipeline_lib.baselines.registry import fit_baseline
        from pipeline_lib.taskdata import restrict

        try:
            config = check_config(method, _parse_overrides(set_ or []))
        except BaselineConfigError as exc:
            _fail(str(exc))
        answer = fit_baseline(method, restrict(t), config)
        label = method
    from rich.console import Console

    from flows.present import answer_tables

    con = Console()
    con.print(f"{label} on {split} task {task}: answers {', '.join(sorted(capabilities(answer))) or 'nothing'}")
    for tab in answer_tables(answer, t):
        con.print(tab)


@app.command()
def baseline(method: str = typer.Argument(..., help="a registered baseline (see `causalmeta methods`)"),
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
        _overrides = _parse_overrides(set_ or [])
        check_config(method, _overrides)
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
    recs = run_baselines(prior, [BaselineRun(name=method, config=_overrides)], tasks, _root(root), workers)
    from pipeline_lib.metrics import comparison_table
    from rich.console import Console

    arrays = {k: {m: v for m, v in a.items() if not m.startswith("coverage")} for k, a in metric_arrays(recs).items()}
    Console().print(comparison_table(arrays).to_rich(title=f"{method} on {Path(prior).name}"))
    for key, rs in recs.items():
        for r in rs:
            if r["status"] != "ok":
                typer.secho(f"task {r['task']} failed: {r['error']}", fg="yellow")


@app.command()
def inspect(prior: str = typer.Argument(..., help="shipped prior name, config YAML or store path"),
            tasks: int = typer.Option(20, help="test tasks to measure")) -> None:
    """How much causal signal a prior carries: the oracle vs the observational marginal."""
    _quiet_env()
    from rich.console import Console
    from rich.table import Table

    from flows.spec import load_prior
    from pipeline_lib.signal import LOW_SIGNAL_NATS, prior_signal

    try:
        if prior.rstrip("/").endswith(".zarr"):
            from storage.prior_store import PriorStore

            cfg = PriorStore.open(prior).config
        else:
            cfg = load_prior(prior)
        sig = prior_signal(cfg, tasks)
    except (FileNotFoundError, ValueError) as exc:
        _fail(f"{prior}: {exc}")
    tab = Table(title=f"Causal signal of {cfg.name} ({sig['n_queries']} queries, {sig['n_tasks']} test tasks)")
    tab.add_column("figure"), tab.add_column("value", justify="right")
    tab.add_row("empty - oracle NLPID, nats / sample", f"{sig['signal_nats']:.3f}")
    tab.add_row("outcome shift, obs. sd (mean / median)", f"{sig['shift_sd_mean']:.2f} / {sig['shift_sd_median']:.2f}")
    tab.add_row("queries with gap > 0.1 nats / sample", f"{100 * sig['share_above_0.1']:.0f}%")
    con = Console()
    con.print(tab)
    if sig["low_signal"]:
        con.print(f"[yellow]warning: below {LOW_SIGNAL_NATS} nats per sample the observational marginal is "
                  "about as good as the truth; NLPID will not separate causal methods on this prior[/]")


@app.command()
def methods() -> None:
    """List the registered amortized methods and baselines, and what each answers."""
    from rich.console import Console
    from rich.table import Table

    from pipeline_lib.baselines.registry import baseline_names, get_baseline
    from pipeline_lib.models.registry import METHODS

    tab = Table(title="Registered methods")
    for c in ("name", "kind", "answers / sees", "description"):
        tab.add_column(c)
    for spec in METHODS.values():
        tab.add_row(spec.name, "amortized", ", ".join(spec.answers), spec.description)
    for name in baseline_names():
        b = get_baseline(name)
        tab.add_row(name, "reference" if b.reference else "baseline", "sees " + ", ".join(b.sees), b.description)
    Console(width=max(80, Console().width)).print(tab)


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


def _print_summary(summary: dict, wide: bool = False, console=None) -> None:
    """One table per prior, one row per method, headline metrics; 80 columns unless ``wide``."""
    from rich.console import Console

    from flows.present import benchmark_summary

    con = console or Console()
    for part in benchmark_summary(summary, wide=wide, width=None if wide else min(con.width, 80)):
        con.print(part, crop=not wide)


WIDE_HELP = "every metric of the comparison table (as wide as it takes) instead of the 80-column headline summary"


@app.command()
def benchmark(preset: str = typer.Option("quick", help="preset in configs/benchmarks/"),
              spec: Optional[Path] = typer.Option(None, help="a BenchmarkSpec YAML instead of a preset"),
              wide: bool = typer.Option(False, "--wide", help=WIDE_HELP),
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
    _print_summary(summary, wide)


@app.command()
def demo(wide: bool = typer.Option(False, "--wide", help=WIDE_HELP),
         root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """The main job: the quick benchmark on the embedded defaults."""
    benchmark(preset="quick", spec=None, wide=wide, root=root)


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
            state = "no (resumable)"
            if s.is_complete:  # "complete" means the bytes check out, not just that checksums exist
                bad = s.integrity_problems()
                state = "yes, verified" if not bad else (
                    f"CORRUPTED: {len(bad)} problem(s), first {bad[0]}; re-run generate to repair")
            tab.add_row(s.config.name, s.hash[:12], state,
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
def verify(store: Path = typer.Argument(..., help="prior store path (*.zarr)")) -> None:
    """Re-check every chunk of a stored prior (file present, decodable, sha256 digest) and its checksums.

    Exit status 0 when intact, 1 when anything fails (each problem printed with split, array, chunk).
    """
    from storage.prior_store import PriorStore

    try:
        s = PriorStore.open(store, allow_incomplete=True)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    pending = s.pending_chunks()
    bad = s.integrity_problems() if s.is_complete else [p for _, _, p in s.damaged_chunks()]
    for problem in bad:
        typer.secho(f"  {problem}", fg="red")
    if bad:
        typer.secho(f"CORRUPTED: {store}: {len(bad)} problem(s); `causalmeta generate` on its config "
                    "regenerates the damaged chunks", fg="red", err=True)
        raise typer.Exit(1)
    if pending:
        typer.secho(f"incomplete: {store}: {len(pending)} chunk(s) pending, the written ones intact; "
                    "re-run generate to resume", fg="yellow", err=True)
        raise typer.Exit(1)
    n_chunks = sum(s.n_chunks(x) for x in ("train", "val", "test"))
    typer.echo(f"ok: {store}: {n_chunks} chunks verified, content digest {s.content_digest[:16]}")


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


def _exit_on_termination_signals() -> None:
    """SIGTERM / SIGHUP end the CLI through SystemExit instead of killing it outright.

    Killed by the default handler, the process skips its ``finally`` blocks and atexit hooks:
    Prefect's temporary API server (a child process stopped at exit) stays running and the
    MLflow run stays RUNNING. Raised as SystemExit (exit status 128 + signal, as the shell
    reports a signalled process), both are closed: the run ends KILLED, the server stops.
    Prefect's engine swaps its own SIGTERM handler in during a flow run and re-sends the
    signal to this one when the flow has been marked crashed.
    """
    import signal

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


def main() -> None:
    _exit_on_termination_signals()
    app()
