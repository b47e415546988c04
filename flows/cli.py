"""The ``causalmeta`` command line. Heavy imports (prefect, torch, mlflow) happen inside commands."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import typer

app = typer.Typer(help="causalmeta: amortized causal inference, benchmarked against Bayesian causal discovery",
                  no_args_is_help=True, add_completion=False)

ROOT_HELP = "data root (Zarr stores, checkpoints, local MLflow); env CAUSALMETA_ROOT"
WIDE_HELP_DATA = "every metric of the comparison table instead of the 80-column headline"


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
            data: str = typer.Option(..., help="prior store (*.zarr under <root>/priors) or imported data store "
                                               "(<root>/data, see `causalmeta import`); path or URL"),
            task: int = typer.Option(0, help="task index in --split (prior stores)"),
            split: str = typer.Option("test", help="train | val | test (prior stores)"),
            set_: Optional[list[str]] = typer.Option(None, "--set", help="baseline config override KEY=VALUE"),
            do: Optional[str] = typer.Option(None, "--do", help="intervention X=a (node name and value in the "
                                                                "data's units), with --outcome"),
            outcome: Optional[str] = typer.Option(None, help="outcome variable Y of --do: its predicted density "
                                                             "is plotted against its observational marginal"),
            samples: int = typer.Option(1000, min=0, help="with --do, for SCM generators (cond-fip, anm-*, "
                                                          "oracle): rows of do-samples written to a CSV (0: none)"),
            counterfactual: Optional[int] = typer.Option(None, help="with --do, for SCM generators: the "
                                                                    "counterfactual of observational row ROW (its "
                                                                    "noise abducted, then --do), printed and "
                                                                    "written to a CSV"),
            seed: int = typer.Option(0, help="seed of the --samples draws"),
            out: Optional[Path] = typer.Option(None, help="folder of the heat map and plot (default "
                                                          "<root>/reports/predict-<data>-<method>)"),
            root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """Answer one stored task with any registered method; print what it answers.

    Amortized methods load the registered model and answer in one pass; baselines are fitted
    on the task. One table per capability: graph, targets, interventional predictions,
    generated samples. On imported data: node names everywhere, an edge heat map (PNG +
    HTML) for graph answers, and with --do X=a --outcome Y the predicted density of Y
    (in the data's units) plotted against Y's observational marginal. With --do and an SCM
    generator: --samples rows under do(X=a) and the --counterfactual of a stored row, as CSVs.
    """
    _quiet_env()
    from pipeline_lib.baselines.registry import BaselineConfigError, baseline_names, check_config
    from pipeline_lib.models.registry import METHODS, get_method
    from pipeline_lib.posterior import capabilities
    from pipeline_lib.taskdata import task_slice
    from storage.importing import DataStore, is_data_store
    from storage.prior_store import PriorStore

    if method not in METHODS and method not in baseline_names():
        _fail(f"method '{method}' is unknown; amortized: {', '.join(METHODS)}; "
              f"baselines: {', '.join(baseline_names())}")
    ds = None
    try:
        if is_data_store(data):
            from pipeline_lib.holdout import seen_task

            ds = DataStore.open(data)
            t = seen_task(ds.task(), [])  # every regime visible
            where, names = ds.label, ds.node_names
        else:
            store = PriorStore.open(data)
            n = store.n_tasks(split)
            if not 0 <= task < n:
                _fail(f"--task {task}: split '{split}' of {Path(data).name} has tasks 0..{n - 1}")
            t = task_slice(store.read(split, task, task + 1), 0)
            where, names = f"{split} task {task}", None
    except (FileNotFoundError, KeyError, ValueError) as exc:
        _fail(f"--data: {exc}")
    d = int(np.asarray(t["node_mask"]).sum())
    note = None
    if method in METHODS:
        from storage.tracking import Tracker, TrackingError

        if ds is not None:
            _check_node_range(_root(root), [(method, model)], [], d)
        try:
            net = Tracker(_root(root)).load_registered_model(method, model if model == "latest" else int(model))
        except TrackingError as exc:
            _fail(str(exc))
        answer = get_method(method).predict(net, t)
        label = f"{method} ({model})"
    else:
        from pipeline_lib.baselines.registry import convergence_of, fit_baseline
        from pipeline_lib.taskdata import restrict

        try:
            config = check_config(method, _parse_overrides(set_ or []))
        except BaselineConfigError as exc:
            _fail(str(exc))
        if ds is not None:
            _check_node_range(_root(root), [], [method], d)
        answer = fit_baseline(method, restrict(t), config)
        converged, why = convergence_of(method, answer)
        note = why if converged is False else None
        label = method
    from rich.console import Console

    from flows.present import answer_tables

    con = Console()
    con.print(f"{label} on {where}: answers {', '.join(sorted(capabilities(answer))) or 'nothing'}")
    if note:
        con.print(f"[bold red]warning[/]: {label} did not converge: {note}")
    known = None if ds is None else np.asarray(ds.task()["targets_known"], bool)
    for tab in answer_tables(answer, t, names, ds.regime_labels if ds else None, known, note):
        con.print(tab)
    folder = out or Path(_root(root)) / "reports" / f"predict-{Path(str(data).rstrip('/')).stem}-{method}"
    if "graph" in capabilities(answer) and ds is not None:
        from storage.report import edge_heatmap

        paths = edge_heatmap(answer.edge_probs(), names, folder, "edges", f"{label} on {ds.name}: P(edge | D)",
                             note=f"NOT CONVERGED: {note}" if note else None)
        con.print(f"edge heat map: {paths['png']} and {paths['html']}")
    if outcome is not None or (do is not None and "generator" not in capabilities(answer)):
        _plot_do(con, answer, t, ds, names, do, outcome, folder, label)
    if do is not None and "generator" in capabilities(answer):
        _write_do_samples(con, answer, t, ds, names, do, samples, counterfactual, seed, folder, label)
    elif counterfactual is not None:
        _fail(f"--counterfactual needs --do and an SCM generator; {label} answers "
              f"{', '.join(sorted(capabilities(answer))) or 'nothing'}")


def _parse_do(do: str, names: list[str]) -> tuple[int, float]:
    """``--do X=a`` -> (index of X in ``names``, a), or a clear error."""
    var, sep, value = do.partition("=")
    try:
        a_user = float(value)
    except ValueError:
        a_user = float("nan")
    if not sep or not np.isfinite(a_user):
        _fail(f"--do expects X=a with a finite number a, got {do!r}")
    if var.strip() not in names:
        _fail(f"variable {var.strip()!r} is not in the data ({', '.join(names)})")
    return names.index(var.strip()), a_user


def _data_units(ds, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-node mean and std mapping the stored (standardised) values to the data's units: an
    imported store's, or 0 / 1 for a prior store (its values are the data)."""
    if ds is None:
        return np.zeros(d), np.ones(d)
    return np.asarray(ds.obs_mean, dtype=np.float64), np.asarray(ds.obs_std, dtype=np.float64)


def _write_do_samples(con, answer, t: dict, ds, names, do: str, n: int, row: int | None, seed: int,
                      folder: Path, label: str) -> None:
    """``--do X=a`` with an SCM generator: ``n`` samples under do(X=a) and the counterfactual of
    stored observational row ``row``, in the data's units, as CSVs (header: the node names)."""
    from rich.table import Table

    x_obs = np.asarray(t["x_obs"], dtype=np.float64)[:, np.asarray(t["node_mask"], bool)]
    names = names or [f"X{v}" for v in range(x_obs.shape[1])]
    j, a_user = _parse_do(do, names)
    mean, std = _data_units(ds, len(names))
    do_z = {j: (a_user - mean[j]) / std[j]}
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"do-{names[j]}={a_user:g}"
    if n:
        x = mean + std * answer.sample_do(do_z, n, np.random.default_rng(seed))
        path = folder / f"{tag}-samples.csv"
        np.savetxt(path, x, delimiter=",", header=",".join(names), comments="", fmt="%.6g")
        con.print(f"{n} samples under do({names[j]}={a_user:g}) ({label}): {path}")
    if row is None:
        return
    if not 0 <= row < len(x_obs):
        _fail(f"--counterfactual {row}: the observational rows are 0..{len(x_obs) - 1}")
    cf = mean + std * answer.counterfactual(x_obs[row:row + 1], do_z)[0]
    fact = mean + std * x_obs[row]
    path = folder / f"{tag}-counterfactual-row{row}.csv"
    np.savetxt(path, np.stack([fact, cf]), delimiter=",", header=",".join(names), comments="", fmt="%.6g")
    tab = Table(title=f"Row {row} and its counterfactual under do({names[j]}={a_user:g})")
    for col in ("node", "factual", "counterfactual", "change"):
        tab.add_column(col, justify="left" if col == "node" else "right")
    for v, name in enumerate(names):
        change = cf[v] - fact[v]
        tab.add_row(name, f"{fact[v]:.4g}", f"{cf[v]:.4g}",
                    f"{change:+.3g}" if abs(change) > 1e-5 * max(1.0, abs(fact[v])) else "0")
    con.print(tab)
    con.print(f"counterfactual (row 1 factual, row 2 counterfactual): {path}")


def _check_node_range(root: str, methods: list[tuple[str, str]], baselines: list[str], d: int) -> None:
    from pipeline_lib.holdout import NodeRangeError
    from tasks.dataset import check_ranges, method_node_ranges

    try:
        check_ranges(method_node_ranges(root, methods, baselines), d)
    except NodeRangeError as exc:
        _fail(str(exc))


def _plot_do(con, answer, t: dict, ds, names, do: str | None, outcome: str | None, folder: Path, label: str) -> None:
    """``--do X=a --outcome Y``: print the predicted law of Y and plot it against Y's observational marginal."""
    from pipeline_lib.posterior import capabilities
    from storage.report import interventional_plot

    if do is None or outcome is None:
        _fail("--do and --outcome go together: --do X=a --outcome Y")
    if "interventional" not in capabilities(answer):
        _fail(f"{label} answers {', '.join(sorted(capabilities(answer)))}: no interventional density for --do")
    names = names or [f"X{v}" for v in range(np.asarray(t["x_obs"]).shape[1])]
    j, a_user = _parse_do(do, names)
    if outcome not in names:
        _fail(f"variable {outcome!r} is not in the data ({', '.join(names)})")
    i = names.index(outcome)
    if i == j:
        _fail("--outcome is the intervened variable: its law under --do is a point mass")
    mean, std = _data_units(ds, len(names))
    a = (a_user - mean[j]) / std[j]
    obs_user = mean[i] + std[i] * np.asarray(t["x_obs"], dtype=np.float64)[:, i]
    qs = answer.quantiles_batch(np.array([j]), np.array([a]), np.array([i]), np.array([0.05, 0.5, 0.95]),
                                np.random.default_rng(0))[0]
    lo = min(obs_user.min(), mean[i] + std[i] * qs[0]) - 0.5 * std[i]
    hi = max(obs_user.max(), mean[i] + std[i] * qs[2]) + 0.5 * std[i]
    grid = np.linspace(lo, hi, 400)
    logq = answer.interventional_log_density(j, a, i, (grid - mean[i]) / std[i]).log_density
    density = np.exp(logq) / std[i]  # the density of Y in the data's units
    experiment, exp_label = None, None
    if ds is not None:
        tt = ds.task()
        for k, r in enumerate(ds.regimes):
            if r["targets"] == [names[j]]:
                n = int(tt["int_rows"][k])
                experiment = mean[i] + std[i] * tt["x_int"][k, :n, i]
                level = mean[j] + std[j] * tt["x_int"][k, :n, j].mean()
                exp_label = f"{outcome} measured in regime {r['label']} ({names[j]} at {level:.3g} on average)"
                break
    png = interventional_plot(grid, density, obs_user, folder / f"do-{names[j]}-{outcome}.png",
                              do_label=f"do({names[j]}={a_user:g})", outcome=outcome, method=label,
                              experiment=experiment, experiment_label=exp_label)
    q_user = mean[i] + std[i] * qs
    con.print(f"{outcome} | do({names[j]}={a_user:g}): median {q_user[1]:.4g}, 90% interval "
              f"[{q_user[0]:.4g}, {q_user[2]:.4g}]; observational mean {obs_user.mean():.4g}, "
              f"sd {obs_user.std():.4g}")
    con.print(f"plot: {png}")


@app.command("import")
def import_(source: str = typer.Argument(..., help="CSV, Parquet or AnnData (.h5ad) file: path or fsspec URL"),
            name: str = typer.Option(..., help="dataset name (a slug): the store is <root>/data/<name>-<hash12>.zarr"),
            regime_col: Optional[str] = typer.Option(None, help="column (h5ad: obs column) naming each row's "
                                                               "experiment"),
            targets_col: Optional[str] = typer.Option(None, help="column of intervened variables, ';'-separated; "
                                                                "empty = observational, '?' = unknown"),
            observational: Optional[str] = typer.Option(None, help="regime label of the observational rows "
                                                                   "(needed without --targets-col)"),
            graph: Optional[str] = typer.Option(None, help="reference graph: edge-list CSV (source,target) or GML"),
            drop_nan: bool = typer.Option(False, "--drop-nan", help="drop rows with NaN / inf cells instead of "
                                                                   "refusing the table"),
            fmt: Optional[str] = typer.Option(None, "--format", help="csv | parquet | h5ad (default: from the "
                                                                   "suffix)"),
            method: Optional[list[str]] = typer.Option(None, help="method to check the node range of (repeatable): "
                                                                  "a baseline, or an amortized 'method[:version]'"),
            root: Optional[str] = typer.Option(None, help=ROOT_HELP + "; may be an fsspec URL")) -> None:
    """Import your own table of measurements into a data store that every method runs on.

    Validates before writing anything (the store appears whole or not at all), standardises
    with the observational rows' mean and sd (stored: predictions return in your units) and
    prints the store path to pass as --data.
    """
    _quiet_env()
    from pipeline_lib.holdout import NodeRangeError
    from storage.importing import DataImportError, import_dataset

    limits = {}
    if method:
        from flows.dataset import parse_method
        from pipeline_lib.baselines.registry import baseline_names
        from tasks.dataset import method_node_ranges

        try:
            amortized = [parse_method(m) for m in method if m not in baseline_names()]
            limits = method_node_ranges(_root(root), amortized, [m for m in method if m in baseline_names()])
        except ValueError as exc:
            _fail(f"--method: {exc}")
    try:
        ds = import_dataset(source, _root(root), name, regime_col=regime_col, targets_col=targets_col,
                            observational=observational, graph=graph, drop_nan=drop_nan, fmt=fmt,
                            node_limits={k: (lo or 1, hi) for k, (lo, hi) in limits.items()})
    except (DataImportError, NodeRangeError, FileNotFoundError) as exc:
        _fail(str(exc))
    from rich.console import Console
    from rich.table import Table

    info = ds.summary()
    tab = Table(title=f"Regimes of {ds.label}", title_justify="left")
    for c in ("regime", "rows", "targets"):
        tab.add_column(c)
    for r in info["regimes"]:
        tab.add_row(r["label"], str(r["rows"]), "unknown" if r["targets"] is None else "; ".join(r["targets"]))
    con = Console()
    con.print(f"{info['variables']} variables, {info['observational_rows']} observational rows"
              + (f", {info['dropped_rows']} rows dropped (NaN / inf)" if info["dropped_rows"] else ""))
    con.print(tab)
    con.print(f"variables: {', '.join(ds.node_names)}")
    con.print(f"reference graph: {'yes' if info['reference_graph'] else 'no (graph metrics need --graph)'}")
    typer.echo(ds.path)


@app.command()
def evaluate(data: str = typer.Option(..., help="imported data store (see `causalmeta import`)"),
             holdout_regimes: str = typer.Option("all", help="'all' (every regime with one known target) or "
                                                             "labels R1,R2: scored, never shown to the methods"),
             baseline: Optional[list[str]] = typer.Option(None, help="baseline to run (repeatable; default "
                                                                     "empty-graph and dcdi)"),
             method: Optional[list[str]] = typer.Option(None, help="registered amortized model 'method[:version]' "
                                                                   "(repeatable)"),
             set_: Optional[list[str]] = typer.Option(None, "--set", help="baseline config override "
                                                                          "BASELINE.KEY=VALUE, repeatable"),
             seed: int = typer.Option(0),
             wide: bool = typer.Option(False, "--wide", help=WIDE_HELP_DATA),
             root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """Which method predicts my held-out experiments best? NLPID + calibration per held-out regime.

    Methods see the observational rows and the regimes not held out; the table compares the
    NLPID of the held-out rows under each method's predicted interventional law. Report in
    <root>/reports and MLflow (experiment 'datasets').
    """
    _quiet_env()
    from pipeline_lib.baselines.registry import BaselineConfigError, UnknownMethodError
    from pipeline_lib.holdout import HoldoutError, NodeRangeError, select_holdout
    from storage.importing import DataStore

    try:
        ds = DataStore.open(data)
        select_holdout(ds.task(), ds.regime_labels, holdout_regimes)
    except (FileNotFoundError, ValueError) as exc:
        _fail(f"--data / --holdout-regimes: {exc}")
    overrides: dict[str, dict] = {}
    for key, value in _parse_overrides(set_ or []).items():
        name, dot, field = key.partition(".")
        if not dot:
            _fail(f"--set {key}: expected BASELINE.KEY=VALUE (e.g. --set dcdi.max_iter=60000)")
        overrides.setdefault(name, {})[field] = value
    from flows.dataset import DEFAULT_BASELINES, evaluate_dataset, parse_method
    from flows.spec import BaselineRun
    from tasks.dataset import check_ranges, method_node_ranges

    names = list(baseline or DEFAULT_BASELINES)
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        _fail(f"--set: {', '.join(unknown)} is not among the chosen baselines ({', '.join(names)})")
    try:
        runs = [BaselineRun(name=b, config=overrides.get(b, {})) for b in names]
        amortized = [parse_method(m) for m in method or []]
        check_ranges(method_node_ranges(_root(root), amortized, names), ds.d)
    except (BaselineConfigError, UnknownMethodError, NodeRangeError, HoldoutError, ValueError) as exc:
        _fail(str(exc))
    summary = evaluate_dataset(store=ds.path, holdout_regimes=holdout_regimes, baselines=runs,
                               methods=[f"{m}:{v}" for m, v in amortized], root=_root(root), seed=seed)
    from rich.console import Console
    from rich.text import Text

    from flows.present import summary_table

    con = Console()
    for label, records in summary["records"].items():
        con.print(summary_table(records, title=f"{label}: held-out regimes {holdout_regimes}",
                                width=None if wide else min(con.width, 80), wide=wide), crop=not wide)
    con.print(Text("mean ± s.e. over held-out regimes; NLPID of the held-out rows (standardised units); "
                   "bold: best; -: not answered", style="dim"))
    for label, why in summary.get("convergence", {}).items():
        con.print(f"[bold red]{label}[/]: {why}")
    for label, err in summary.get("failed", {}).items():
        con.print(f"[yellow]{label} failed[/]: {err}")
    con.print(f"report: {summary['html']}")
    if summary.get("mlflow_url"):
        con.print(f"MLflow run: {summary['mlflow_url']}")


@app.command()
def baseline(method: str = typer.Argument(..., help="a registered baseline (see `causalmeta methods`)"),
             prior: str = typer.Option(..., help="prior store path (*.zarr)"),
             tasks: int = typer.Option(10, help="number of test tasks"),
             workers: int = typer.Option(2), root: Optional[str] = typer.Option(None, help=ROOT_HELP),
             set_: Optional[list[str]] = typer.Option(
                 None, "--set", help="config override KEY=VALUE (YAML value), repeatable: --set steps=300"),
             int_holdout: float = typer.Option(
                 0.5, min=0.0, max=0.99, help="share of each regime's interventional rows kept out of the fit and "
                 "scored by NLPID (the benchmark's default; 0: fit and score all)")) -> None:
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
    recs = run_baselines(prior, [BaselineRun(name=method, config=_overrides)], tasks, _root(root), workers,
                         int_holdout=int_holdout)
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
    if (r / "data").is_dir():
        from storage.importing import DataStore

        dt = Table(title=f"Imported data under {r / 'data'}")
        for c in ("name", "hash", "variables", "obs rows", "regimes", "path"):
            dt.add_column(c)
        for p in sorted((r / "data").glob("*.zarr")):
            try:
                ds = DataStore.open(p)  # verifies every array's digest
                dt.add_row(ds.name, ds.hash[:12], str(ds.d), str(ds.attrs["n_obs"]), str(len(ds.regimes)), str(p))
            except Exception as exc:  # a broken store is shown, not fatal
                dt.add_row(p.name, "?", "", "", f"unreadable: {exc}", str(p))
        con.print(dt)
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


# --- GIM: a per-system fit (`causalmeta train gim`, `causalmeta predict gim`; see main()) -----


def _gim_task(prior: str, split: str, task: int) -> tuple[dict, str, str]:
    """One system of a prior: from its store (``*.zarr``) or drawn from its config (same bytes)."""
    from pipeline_lib.priors import sample_split_range
    from pipeline_lib.taskdata import task_slice

    if prior.rstrip("/").endswith(".zarr"):
        from storage.prior_store import PriorStore

        store = PriorStore.open(prior)
        cfg, n = store.config, store.n_tasks(split)
        read = lambda: store.read(split, task, task + 1)  # noqa: E731
    else:
        from flows.spec import load_prior

        cfg = load_prior(prior)
        n = cfg.n_tasks(split)
        read = lambda: sample_split_range(cfg, split, task, task + 1)  # noqa: E731
    if not 0 <= task < n:
        raise ValueError(f"--task {task}: split '{split}' of prior {cfg.name} has tasks 0..{n - 1}")
    if cfg.interventions.perturbation_dim == 0:
        raise ValueError(f"prior {cfg.name} has no perturbation features (interventions.perturbation_dim = 0)")
    return task_slice(read(), 0), cfg.name, cfg.content_hash()


@app.command("train-gim", hidden=True)
def train_gim(prior: str = typer.Option(..., help="shipped prior name, config YAML or store path"),
              task: int = typer.Option(0, help="the system: task index in --split"),
              split: str = typer.Option("test", help="train | val | test"),
              set_: Optional[list[str]] = typer.Option(None, "--set", help="GIM config override KEY=VALUE"),
              out: Optional[Path] = typer.Option(None, help="model file (default <root>/models/gim/...pt)"),
              root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """`causalmeta train gim`: fit GIM on one system of a prior, save it (state dict + JSON config)
    and track the fit in MLflow (experiment `gim`: config, metrics against the truth, model file)."""
    _quiet_env()
    from pipeline_lib.baselines.registry import BaselineConfigError, check_config

    try:
        cfg = check_config("gim", _parse_overrides(set_ or []))
        t, name, digest = _gim_task(prior, split, task)
    except (BaselineConfigError, FileNotFoundError, KeyError, ValueError) as exc:
        _fail(str(exc))
    import torch

    from pipeline_lib.models.gim import fit_gim
    from pipeline_lib.models.gim.metrics import score_fit
    from pipeline_lib.taskdata import restrict
    from storage.tracking import Tracker, flatten

    data = restrict(t)
    torch.set_num_threads(1)  # small per-node matmuls: one thread is faster on shared cores
    try:
        post = fit_gim(data, cfg)
    except ValueError as exc:
        _fail(str(exc))
    metrics = {"train_seconds": post.train_seconds, **score_fit(post, data, cfg.n_test_regimes)}
    path = post.save(out or Path(_root(root)) / "models" / "gim" / f"{name}-{digest[:12]}-{split}{task}.pt")
    tracker = Tracker(_root(root))
    with tracker.start_run(run_name=f"gim-{name}-{split}{task}", experiment="gim",
                           tags={"method": "gim", "prior": name, "prior_hash": digest}):
        tracker.log_params({**flatten(cfg.model_dump(mode="json")), "prior": name, "split": split, "task": task})
        tracker.log_metrics(metrics)
        tracker.log_artifact(path)
        run_id = tracker.run_id
    typer.echo(json.dumps({"model": str(path), "run_id": run_id, "prior": name, "metrics": metrics}, indent=1))


def _read_perturbations(path: Path, p: int) -> tuple[list[str], "np.ndarray"]:
    """``perturbations: {name: [p floats], ...}`` (or ``features: [p floats]``) from a YAML file."""
    import numpy as np

    from flows.spec import load_yaml_mapping

    raw = load_yaml_mapping(path, "perturbation features")
    if "features" in raw and "perturbations" not in raw:
        raw = {"perturbations": {"perturbation": raw["features"]}}
    items = raw.get("perturbations")
    if not isinstance(items, dict) or not items:
        raise ValueError(f"{path}: expected a mapping 'perturbations: {{name: [{p} numbers], ...}}' or "
                         f"'features: [{p} numbers]'")
    names, rows = [], []
    for key, vec in items.items():
        try:
            arr = np.asarray(vec, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: perturbations.{key}: expected {p} numbers, got {vec!r}") from None
        if arr.shape != (p,) or not np.isfinite(arr).all():
            raise ValueError(f"{path}: perturbations.{key}: expected {p} finite numbers (the model's feature "
                             f"dimension), got shape {arr.shape}")
        names.append(str(key))
        rows.append(arr)
    return names, np.stack(rows)


@app.command("predict-gim", hidden=True)
def predict_gim(model: str = typer.Option("latest", help="model file of `causalmeta train gim`, or 'latest' "
                                                         "(the newest under <root>/models/gim)"),
                perturbation: Path = typer.Option(..., help="YAML: perturbations: {name: [features]}"),
                n: int = typer.Option(1000, min=1, help="samples per perturbation"),
                seed: int = typer.Option(0),
                out: Optional[Path] = typer.Option(None, help="output .npz (default <root>/reports/gim-predict.npz)"),
                root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """`causalmeta predict gim`: samples and predicted targets of (unseen) perturbations from their
    features; writes an .npz (names, features, target_probs, shift, scale, samples (m, n, d))."""
    import numpy as np

    from pipeline_lib.models.gim import GIMInputError, GIMPosterior

    if model == "latest":
        found = sorted((Path(_root(root)) / "models" / "gim").glob("*.pt"), key=lambda q: q.stat().st_mtime)
        if not found:
            _fail(f"--model latest: no GIM model under {Path(_root(root)) / 'models' / 'gim'}; run "
                  "`causalmeta train gim --prior ...` first")
        model = str(found[-1])
    try:
        post = GIMPosterior.load(model)
        names, feats = _read_perturbations(perturbation, post.model.p)
    except (FileNotFoundError, GIMInputError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    pred = post.predict_perturbation(feats)
    rng = np.random.default_rng(seed)
    samples = np.stack([post.sample_perturbation(f, n, rng) for f in feats]).astype(np.float32)
    dest = out or Path(_root(root)) / "reports" / "gim-predict.npz"
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dest, names=np.asarray(names), features=feats, samples=samples, **pred)
    from rich.console import Console
    from rich.table import Table

    tab = Table(title=f"GIM {Path(model).name}: predicted targets (P > 0.5) and mean shift")
    for col in ("perturbation", "targets (P)", "largest mean change"):
        tab.add_column(col)
    base = post.sample_observational(n, rng=np.random.default_rng(seed)).mean(0)
    for name, probs, x in zip(names, pred["target_probs"], samples):
        hits = np.flatnonzero(probs > 0.5)
        delta = x.mean(0) - base
        j = int(np.argmax(np.abs(delta)))
        tab.add_row(name, ", ".join(f"X{v} ({probs[v]:.2f})" for v in hits) or "none",
                    f"X{j}: {delta[j]:+.3g}")
    Console().print(tab)
    typer.echo(f"wrote {dest}")


#: `causalmeta train gim` / `predict gim` run the per-system GIM commands above (the generic
#: `train` meta-trains amortized methods, `predict` answers stored tasks)
_GIM_ALIASES = {"train": "train-gim", "predict": "predict-gim"}


def _route_gim(argv: list[str]) -> list[str]:
    """``[cmd, "gim", ...] -> [cmd-gim, ...]`` for cmd in train / predict; other argv unchanged."""
    if len(argv) >= 2 and argv[0] in _GIM_ALIASES and argv[1] == "gim":
        return [_GIM_ALIASES[argv[0]], *argv[2:]]
    return argv


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
    import sys

    _exit_on_termination_signals()
    app(args=_route_gim(sys.argv[1:]))
