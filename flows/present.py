"""Terminal views of what a method answers about one task (rich tables, <= 80 columns).

One table per capability the answer has (:func:`pipeline_lib.posterior.capabilities`):
the most probable edges, the most probable targets per regime, the interventional
predictions of every do(X_j = a) query, and the generator's fit to the stored samples.
"""
from __future__ import annotations

import os

import numpy as np
from rich.table import Table

from pipeline_lib.evaluation import make_queries, score_generator
from pipeline_lib.posterior import capabilities
from pipeline_lib.taskdata import restrict
from storage.report import format_cell, headline_columns  # one cell format for every view

TOP_EDGES = 12


def _name(v: int, names: list[str] | None) -> str:
    return names[v] if names else f"X{v}"


def graph_table(answer, data: dict, names: list[str] | None = None, note: str | None = None) -> Table:
    """The most probable edges; ``note`` (a fit that did not converge) heads the table in red."""
    probs = np.asarray(answer.edge_probs())
    truth = data.get("adjacency")
    title = f"Most probable edges (of {probs.shape[0] * (probs.shape[0] - 1)} possible)"
    tab = Table(title=title + (f"\n[bold red]NOT CONVERGED[/]: {note}" if note else ""))
    for c in ("edge", "P(edge | D)") + (("true",) if truth is not None else ()):
        tab.add_column(c)
    flat = [(probs[i, j], i, j) for i in range(len(probs)) for j in range(len(probs)) if i != j]
    for p, i, j in sorted(flat, reverse=True)[:TOP_EDGES]:
        row = [f"{_name(i, names)} -> {_name(j, names)}", f"{p:.3f}"]
        if truth is not None:
            row.append("yes" if truth[i, j] else "")
        tab.add_row(*row)
    return tab


def targets_table(answer, data: dict, names: list[str] | None = None, regimes: list[str] | None = None,
                  known: np.ndarray | None = None) -> Table:
    """Top-3 predicted targets per regime; ``regimes`` labels the rows, ``known`` (K,) says which
    regimes' true targets are known (imported data: "?" where they are not)."""
    probs = np.asarray(answer.intervention_target_probs())
    truth = data.get("int_targets")
    tab = Table(title="Intervention targets per regime (top 3)")
    for c in ("regime", "predicted targets (probability)") + (("true targets",) if truth is not None else ()):
        tab.add_column(c)
    for k, row in enumerate(probs):
        top = np.argsort(-row)[:3]
        cells = [regimes[k] if regimes else str(k), ", ".join(f"{_name(v, names)} {row[v]:.2f}" for v in top)]
        if truth is not None:
            cells.append("?" if known is not None and not known[k] else
                         ", ".join(_name(v, names) for v in np.flatnonzero(truth[k])) or "none")
        tab.add_row(*cells)
    return tab


def interventional_table(answer, task: dict, names: list[str] | None = None, seed: int = 0) -> Table:
    q = make_queries(task)
    est = answer.log_density_batch(q.j, q.a, q.i, q.samples)
    qs = answer.quantiles_batch(q.j, q.a, q.i, np.array([0.05, 0.5, 0.95]), np.random.default_rng(seed))
    tab = Table(title="q(x_i | do(x_j = a), D): median, 90% interval vs truth")
    for c in ("do", "outcome", "median", "90% interval", "true mean", "NLPID/sample"):
        tab.add_column(c)
    for k in range(len(q)):
        tab.add_row(f"{_name(int(q.j[k]), names)}={q.a[k]:.2f}", _name(int(q.i[k]), names), f"{qs[k, 1]:.2f}",
                    f"[{qs[k, 0]:.2f}, {qs[k, 2]:.2f}]", f"{q.samples[k].mean():.2f}",
                    f"{-est.log_density[k].mean():.3f}")
    return tab


def generator_table(answer, data: dict, seed: int = 0) -> Table:
    tab = Table(title="Generated vs stored samples (RMSE per node, MMD)")
    tab.add_column("metric"), tab.add_column("value")
    for k, v in score_generator(answer, data, seed).items():
        tab.add_row(k, f"{v:.4f}")
    return tab


def answer_tables(answer, task: dict, names: list[str] | None = None, regimes: list[str] | None = None,
                  known: np.ndarray | None = None, note: str | None = None) -> list[Table]:
    """The tables of every capability ``answer`` has, for ONE task (no task axis).

    ``names``: node names (imported data); ``regimes`` / ``known``: regime labels and which
    have known targets; ``note``: why the fit did not converge (shown on the graph table).
    """
    caps, data, out = capabilities(answer), restrict(task), []
    if "graph" in caps:
        out.append(graph_table(answer, data, names, note))
    if "targets" in caps:
        out.append(targets_table(answer, data, names, regimes, known))
    if "interventional" in caps:
        try:
            out.append(interventional_table(answer, task, names))
        except ValueError:  # no single-target hard regime: nothing to query
            pass
    if "generator" in caps:
        out.append(generator_table(answer, data))
    return out


# --- the benchmark summary: one row per method, headline metrics, fits 80 columns ----------
LEGEND = ("mean ± s.e. over test tasks; bold: best mean; -: not answered by the method;\n"
          "* p<0.05, ** p<0.01: worse than the best (Welch's t-test over tasks)")


def summary_table(records: list[dict], title: str | None = None, width: int | None = 80, wide: bool = False):
    """A rich Table of a prior's comparison records, one row per method.

    With ``width`` (and not ``wide``), headline columns are dropped from the right until the
    table fits: no cell is ever cut or wrapped. The dropped ones are named in the caption.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    methods = list(dict.fromkeys(r["method"] for r in records))
    by = {(r["method"], r["metric"]): r for r in records}
    arrow = {r["metric"]: "↓" if r["lower_is_better"] else "↑" for r in records}

    def build(cols, caption=None) -> Table:
        tab = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, title_justify="left",
                    caption_justify="left")
        tab.add_column("method", no_wrap=True)
        for h, k in cols:
            tab.add_column(f"{h} {arrow[k]}", justify="right", no_wrap=True)
        for m in methods:
            row = [m]
            for _, k in cols:
                txt, best = format_cell(by.get((m, k)))
                row.append(f"[bold]{txt}[/]" if best else txt)
            tab.add_row(*row)
        return tab

    def natural_width(tab: Table) -> int:  # measured by rendering: exact, whatever the box style
        with open(os.devnull, "w") as sink:
            con = Console(width=10_000, record=True, file=sink)
            con.print(tab)
        return max(len(line.rstrip()) for line in con.export_text().splitlines())

    cols, dropped = headline_columns(records, wide), []
    while width and not wide and len(cols) > 1 and natural_width(build(cols)) > width:
        dropped.insert(0, cols.pop()[0])
    return build(cols, f"not shown (too wide): {', '.join(dropped)}; see --wide or the report" if dropped else None)


def benchmark_summary(summary: dict, wide: bool = False, width: int = 80) -> list:
    """Renderables of the benchmark summary: a table per prior, the legend, where to look next."""
    from rich.text import Text

    out = []
    for prior, records in summary["records"].items():
        n = max((r["n"] for r in records), default=0)
        out.append(summary_table(records, title=f"prior {prior} ({n} test tasks)", width=width, wide=wide))
    out.append(Text(LEGEND, style="dim"))
    out.append(Text(f"report: {summary['html']}"))
    if summary.get("mlflow_url"):
        out.append(Text(f"MLflow run: {summary['mlflow_url']}"))
    out.append(Text(f"MLflow run id: {summary['run_id']}"))
    if summary.get("tracking_uri"):
        out.append(Text(f"MLflow backend: {summary['tracking_uri']}"))
    if "seconds" in summary:
        out.append(Text(f"total: {format_duration(summary['seconds'])}"))
    return out


def format_duration(seconds: float) -> str:
    """``"45s"``, ``"3m20s"``, ``"1h02m"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
