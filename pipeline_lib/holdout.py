"""Scoring methods on held-out experiments of an imported dataset (pure science, numpy only).

An imported task (``storage.importing``, one task without the task axis) holds the
observational rows ``x_obs (N, d)`` and K regimes ``x_int (K, n_max, d)``, NaN-padded past
``int_rows[k]`` real rows, with ``int_targets (K, d)`` and ``targets_known (K,)``. All values
are standardised (``z = (x - obs_mean) / obs_std``).

Split. For a set H of held-out regimes, a method sees the observational rows and the other
regimes (:func:`seen_task`); each held-out regime ``k`` with ONE known target ``j`` is scored
on its real rows (:func:`heldout_queries`). Real experiments do not set ``X_j`` to a value,
so the query is

    do(X_j = a_k),   a_k = mean of x_j over the rows of regime k

(the intervened variable's average level in that experiment; for a hard intervention it is
the set value exactly). For every other variable ``i`` the M rows of ``x_i`` in regime k are
the true samples, and

    NLPID_k = mean over i != j of  -sum_m log q(x_i^m | do(X_j = a_k), D_seen)

in standardised units (``nlpid``; ``nlpid_user`` adds ``sum_m log obs_std_i``: the same in
the user's units), with the central 50% / 90% interval coverage, as
:func:`pipeline_lib.evaluation.score_interventional` defines them. A method without the
interventional capability gets no NLPID ("-").

Methods need rectangular ``x_int``: :func:`seen_task` keeps ``n`` rows of every seen regime,
``n`` = the smallest seen regime's row count, a seeded random subset of the larger ones
(a simplification: the rest of a large regime's rows are not shown to the methods).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline_lib.evaluation import Queries, score_graph, score_interventional
from pipeline_lib.posterior import capabilities

__all__ = ["HoldoutError", "NodeRangeError", "check_node_range", "heldout_queries", "regime_rows",
           "score_heldout", "score_reference_graph", "score_seen_targets", "scoreable_regimes", "select_holdout",
           "seen_task"]


class HoldoutError(ValueError):
    """A held-out regime that cannot be scored (names it and why)."""


class NodeRangeError(ValueError):
    """The data has more variables than a method supports (names the model and its range)."""


def check_node_range(label: str, lo: int | None, hi: int | None, d: int, what: str = "") -> None:
    """Refuse ``d`` variables outside ``[lo, hi]`` of model ``label`` (None: unbounded)."""
    if hi is not None and d > hi:
        raise NodeRangeError(f"{label}{what} supports d in [{lo if lo is not None else 1}, {hi}]; "
                             f"the data has {d} variables")


def regime_rows(task: dict, k: int) -> np.ndarray:
    """The real rows ``(n_k, d)`` of regime ``k`` (padding dropped)."""
    n = int(np.asarray(task["int_rows"])[k])
    return np.asarray(task["x_int"], dtype=np.float64)[k, :n]


def scoreable_regimes(task: dict) -> list[int]:
    """Regimes with one known target: those a held-out NLPID is defined for."""
    known = np.asarray(task.get("targets_known", np.ones(len(task["int_targets"]), bool)), dtype=bool)
    n_targets = np.asarray(task["int_targets"], dtype=bool).sum(1)
    return [int(k) for k in np.flatnonzero(known & (n_targets == 1))]


def select_holdout(task: dict, labels: Sequence[str], spec: str | Sequence[str]) -> list[int]:
    """Regime indices of ``spec``: ``"all"`` (every regime with one known target) or labels.

    A named regime with unknown or several targets is refused (its NLPID is undefined).
    """
    ok = scoreable_regimes(task)
    if isinstance(spec, str) and spec.strip().lower() == "all":
        if not ok:
            raise HoldoutError("--holdout-regimes all: no regime has exactly one known target, so no held-out "
                               "do(X_j = a) query exists")
        return ok
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    if not names:
        raise HoldoutError("--holdout-regimes: empty; give 'all' or regime labels R1,R2")
    out = []
    for name in names:
        if name not in labels:
            raise HoldoutError(f"--holdout-regimes: regime {name!r} does not exist ({', '.join(labels) or 'none'})")
        k = list(labels).index(name)
        if k not in ok:
            why = ("its targets are unknown" if not np.asarray(task["targets_known"])[k]
                   else f"it has {int(np.asarray(task['int_targets'])[k].sum())} targets")
            raise HoldoutError(f"--holdout-regimes: regime {name!r} cannot be scored: {why}; a held-out regime "
                               "needs exactly one known target")
        out.append(k)
    return out


def seen_task(task: dict, held_out: Sequence[int], seed: int = 0) -> dict:
    """What methods see: the observational rows and the regimes not in ``held_out``.

    A task dict of the data contract (rectangular ``x_int`` of the seen regimes, see the
    module docstring; ``int_values`` NaN: no set values), plus ``adjacency`` when the task
    has a reference graph.
    """
    k_all = len(np.asarray(task["int_targets"]))
    seen = [k for k in range(k_all) if k not in set(held_out)]
    d = np.asarray(task["x_obs"]).shape[1]
    rng = np.random.default_rng(seed)
    rows = [regime_rows(task, k) for k in seen]
    n = min((len(r) for r in rows), default=0)
    x_int = np.stack([r[np.sort(rng.choice(len(r), n, replace=False))] for r in rows]) if rows \
        else np.zeros((0, 1, d))
    out = {
        "x_obs": np.asarray(task["x_obs"], dtype=np.float64),
        "node_mask": np.ones(d, bool),
        "x_int": x_int,
        "int_targets": np.asarray(task["int_targets"], dtype=bool)[seen].reshape(len(seen), d),
        "int_values": np.full((len(seen), d), np.nan),
        "targets_known": np.asarray(task.get("targets_known", np.ones(k_all, bool)), dtype=bool)[seen],
    }
    if "adjacency" in task:
        out["adjacency"] = np.asarray(task["adjacency"], dtype=np.uint8)
    return out


def heldout_queries(task: dict, k: int) -> Queries:
    """The do(X_j = a_k) queries of held-out regime ``k`` (module docstring), one per outcome i != j."""
    targets = np.flatnonzero(np.asarray(task["int_targets"], dtype=bool)[k])
    if len(targets) != 1:
        raise HoldoutError(f"regime {k}: {len(targets)} known targets; a held-out query needs exactly one")
    j = int(targets[0])
    rows = regime_rows(task, k)
    if len(rows) < 2:
        raise HoldoutError(f"regime {k}: {len(rows)} rows; at least 2 are needed")
    others = np.array([i for i in range(rows.shape[1]) if i != j])
    a = float(rows[:, j].mean())
    return Queries(np.full(len(others), j), np.full(len(others), a), others, rows[:, others].T.copy())


def score_reference_graph(answer, reference: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Graph metrics against a reference graph: all of ``score_graph`` for a DAG; for a cyclic
    reference (a consensus network with feedback loops) E-SHD and edge AUROC / AUPRC only,
    SID being defined for DAGs."""
    from pipeline_lib import metrics as M

    if M.is_dag(reference):
        return score_graph(answer, reference, seed=seed)
    graphs = answer.sample_graphs(100, np.random.default_rng(seed))
    probs = answer.edge_probs()
    return {"e_shd": float(M.expected_shd(reference, graphs)), "edge_auroc": float(M.edge_auroc(reference, probs)),
            "edge_auprc": float(M.edge_auprc(reference, probs))}


def score_seen_targets(answer, seen: dict) -> dict[str, float]:
    """Intv-AUROC / AUPRC of a target posterior over the SEEN regimes whose targets the data
    names (a method inferring targets never sees them; empty when none is known)."""
    from pipeline_lib import metrics as M

    known = np.asarray(seen.get("targets_known", np.ones(len(seen["int_targets"]), bool)), dtype=bool)
    truth = np.asarray(seen["int_targets"], dtype=bool)[known]
    if not known.any() or not truth.any() or truth.all():
        return {}
    probs = np.asarray(answer.intervention_target_probs())[known]
    return {"intv_auroc": float(M.intervention_auroc(truth, probs)),
            "intv_auprc": float(M.intervention_auprc(truth, probs))}


def score_heldout(answer, task: dict, held_out: Sequence[int], seed: int = 0,
                  seen: dict | None = None) -> list[dict[str, float]]:
    """Metrics of ``answer`` (fitted on :func:`seen_task`) on each held-out regime, in order.

    NLPID and calibration per regime where the answer is an interventional predictor, plus,
    in the first regime's entry only (one value per fit), graph metrics against the task's
    reference graph where both exist (:func:`score_reference_graph`) and, given ``seen``,
    target metrics of a target posterior on the seen regimes (:func:`score_seen_targets`).
    """
    caps = capabilities(answer)
    std = np.asarray(task.get("obs_std", np.ones(np.asarray(task["x_obs"]).shape[1])), dtype=np.float64)
    out = []
    for n, k in enumerate(held_out):
        m: dict[str, float] = {}
        if "interventional" in caps:
            q = heldout_queries(task, k)
            m.update(score_interventional(answer, q, seed))
            m["nlpid_user"] = m["nlpid"] + float(np.mean(q.samples.shape[1] * np.log(std[q.i])))
            m["n_rows"] = float(q.samples.shape[1])
        if n == 0 and "graph" in caps and "adjacency" in task:
            m.update(score_reference_graph(answer, np.asarray(task["adjacency"], dtype=np.uint8), seed))
        if n == 0 and "targets" in caps and seen is not None:
            m.update(score_seen_targets(answer, seen))
        out.append(m)
    return out
