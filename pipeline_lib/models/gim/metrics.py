"""Distribution errors of predicted samples for ONE perturbation (the GIM evaluation).

For predicted samples ``y: (m, d)`` and true samples ``x: (n, d)`` of the same perturbation:

* ``mmd``: RBF MMD^2 (median heuristic) and ``energy``: energy distance, both the one
  definition of :mod:`pipeline_lib.metrics.distributions`;
* ``w1``: mean over nodes of the 1-D Wasserstein-1 distance of the marginals,
  ``(1/d) sum_j W1(y_j, x_j)``;
* ``mean_shift``: the error of the predicted mean shift, ``sqrt((1/d) sum_j (ybar_j - xbar_j)^2)``
  (the shift from the observational mean, ``ybar - obar`` vs ``xbar - obar``, has the same error).

W1 and the mean-shift error are not in ``pipeline_lib.metrics`` (a GIM-only need so far); they
belong there once another method reports them.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance

from pipeline_lib.metrics import energy_distance, mmd_rbf

__all__ = ["DISTRIBUTION_METRICS", "distribution_errors", "marginal_w1", "mean_shift_error", "score_fit", "unseen_errors"]

DISTRIBUTION_METRICS = ("mmd", "energy", "w1", "mean_shift")


def _pair(y, x) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    if y.ndim != 2 or x.ndim != 2 or y.shape[1] != x.shape[1] or len(y) < 2 or len(x) < 2:
        raise ValueError(f"predicted and true samples must be (m >= 2, d) and (n >= 2, d), got {y.shape}, {x.shape}")
    if not (np.isfinite(y).all() and np.isfinite(x).all()):
        raise ValueError("samples contain NaN or inf")
    return y, x


def marginal_w1(y, x) -> float:
    """Mean over nodes of W1 between the marginals of ``y: (m, d)`` and ``x: (n, d)``."""
    y, x = _pair(y, x)
    return float(np.mean([wasserstein_distance(y[:, j], x[:, j]) for j in range(x.shape[1])]))


def mean_shift_error(y, x) -> float:
    """Root mean square over nodes of the difference of the sample means."""
    y, x = _pair(y, x)
    return float(np.sqrt(np.mean((y.mean(0) - x.mean(0)) ** 2)))


def distribution_errors(y, x) -> dict[str, float]:
    """All four errors of the module docstring."""
    y, x = _pair(y, x)
    return {"mmd": float(mmd_rbf(y, x)), "energy": float(energy_distance(y, x)), "w1": marginal_w1(y, x),
            "mean_shift": mean_shift_error(y, x)}


def unseen_errors(sample_fn, data, n_test_regimes: int, n_samples: int = 500, seed: int = 0) -> dict[str, float]:
    """Mean over the last ``n_test_regimes`` regimes of :func:`distribution_errors` between
    ``sample_fn(gamma_k, n_samples, rng)`` and the regime's true rows ``x_int[k]``.

    ``sample_fn=None`` is the observational reference: the rows of ``x_obs`` stand in for every
    prediction (what a method predicts that ignores the perturbation).
    """
    x_int, gamma = np.asarray(data["x_int"]), np.asarray(data["perturbation"])
    k_all = x_int.shape[0]
    if not 1 <= n_test_regimes <= k_all:
        raise ValueError(f"n_test_regimes={n_test_regimes} must lie in 1..K={k_all}")
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(k_all - n_test_regimes, k_all):
        pred = np.asarray(data["x_obs"]) if sample_fn is None else sample_fn(gamma[k], n_samples, rng)
        rows.append(distribution_errors(pred, x_int[k]))
    return {m: float(np.mean([r[m] for r in rows])) for m in DISTRIBUTION_METRICS}


def score_fit(answer, data, n_test_regimes: int, n_samples: int = 500, seed: int = 0) -> dict[str, float]:
    """Structure, targets (seen / unseen regimes) and unseen-perturbation errors of one fit.

    ``answer`` may have a graph (``edge_probs`` and samples for E-SHD; ``map_graph`` for the SHD),
    ``(K, d)`` target probabilities and ``sample_perturbation``; metrics of what it lacks are
    left out. ``data`` = ``restrict(task)`` with the truth arrays.
    """
    from pipeline_lib import metrics as M

    out: dict[str, float] = {}
    k_all = np.asarray(data["x_int"]).shape[0]
    seen = k_all - n_test_regimes
    if hasattr(answer, "edge_probs") and "adjacency" in data:
        adj = data["adjacency"]
        if hasattr(answer, "map_graph"):  # the DAG a point estimate generates with
            out["shd"] = float(M.shd(adj, answer.map_graph()))
        out["e_shd"] = float(M.expected_shd(adj, answer.sample_graphs(100, np.random.default_rng(seed))))
        out["edge_auroc"] = float(M.edge_auroc(adj, answer.edge_probs()))
    if hasattr(answer, "intervention_target_probs") and "int_targets" in data:
        probs, truth = np.asarray(answer.intervention_target_probs()), np.asarray(data["int_targets"])
        out["intv_auroc_seen"] = float(M.intervention_auroc(truth[:seen], probs[:seen]))
        if n_test_regimes:
            out["intv_auroc_unseen"] = float(M.intervention_auroc(truth[seen:], probs[seen:]))
    if hasattr(answer, "sample_perturbation") and n_test_regimes:
        out.update({f"unseen_{k}": v for k, v in
                    unseen_errors(answer.sample_perturbation, data, n_test_regimes, n_samples, seed).items()})
    return out
