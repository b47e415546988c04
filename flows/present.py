"""Terminal views of what a method answers about one task (rich tables, <= 80 columns).

One table per capability the answer has (:func:`pipeline_lib.posterior.capabilities`):
the most probable edges, the most probable targets per regime, the interventional
predictions of every do(X_j = a) query, and the generator's fit to the stored samples.
"""
from __future__ import annotations

import numpy as np
from rich.table import Table

from pipeline_lib.evaluation import make_queries, score_generator
from pipeline_lib.posterior import capabilities
from pipeline_lib.taskdata import restrict

TOP_EDGES = 12


def _name(v: int, names: list[str] | None) -> str:
    return names[v] if names else f"X{v}"


def graph_table(answer, data: dict, names: list[str] | None = None) -> Table:
    probs = np.asarray(answer.edge_probs())
    truth = data.get("adjacency")
    tab = Table(title=f"Most probable edges (of {probs.shape[0] * (probs.shape[0] - 1)} possible)")
    for c in ("edge", "P(edge | D)") + (("true",) if truth is not None else ()):
        tab.add_column(c)
    flat = [(probs[i, j], i, j) for i in range(len(probs)) for j in range(len(probs)) if i != j]
    for p, i, j in sorted(flat, reverse=True)[:TOP_EDGES]:
        row = [f"{_name(i, names)} -> {_name(j, names)}", f"{p:.3f}"]
        if truth is not None:
            row.append("yes" if truth[i, j] else "")
        tab.add_row(*row)
    return tab


def targets_table(answer, data: dict, names: list[str] | None = None) -> Table:
    probs = np.asarray(answer.intervention_target_probs())
    truth = data.get("int_targets")
    tab = Table(title="Intervention targets per regime (top 3)")
    for c in ("regime", "predicted targets (probability)") + (("true targets",) if truth is not None else ()):
        tab.add_column(c)
    for k, row in enumerate(probs):
        top = np.argsort(-row)[:3]
        cells = [str(k), ", ".join(f"{_name(v, names)} {row[v]:.2f}" for v in top)]
        if truth is not None:
            cells.append(", ".join(_name(v, names) for v in np.flatnonzero(truth[k])) or "none")
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


def answer_tables(answer, task: dict, names: list[str] | None = None) -> list[Table]:
    """The tables of every capability ``answer`` has, for ONE task (no task axis)."""
    caps, data, out = capabilities(answer), restrict(task), []
    if "graph" in caps:
        out.append(graph_table(answer, data, names))
    if "targets" in caps:
        out.append(targets_table(answer, data, names))
    if "interventional" in caps:
        try:
            out.append(interventional_table(answer, task, names))
        except ValueError:  # no single-target hard regime: nothing to query
            pass
    if "generator" in caps:
        out.append(generator_table(answer, data))
    return out
