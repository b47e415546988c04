"""Scoring any method on a test task with the field's metrics (one definition each).

Every method, amortized or per-dataset, is scored on the same **queries** of a test task:
for each interventional regime ``k`` with a single hard target ``j`` (value ``a``) and each
real outcome node ``i != j``, the ``M`` true interventional samples ``x_int[k, :, i]``.

Per query (DESIGN.md, "NLPID"): ``NLPID = -sum_m log q(x_i^m | do(X_j = a), D_obs)`` (the
papers' sum convention) and its per-sample mean. A task's value is the mean over its
queries, so tasks weigh equally whatever their number of regimes and nodes; the table
aggregates mean +- s.e. over tasks. Calibration: the fraction of true samples inside the
method's central 50% and 90% predictive intervals (nominal 0.5 / 0.9).

Graph metrics (methods that return a :class:`~pipeline_lib.baselines.base.CausalPosterior`):
E-SHD and E-SID over posterior graph samples, edge AUROC/AUPRC of the marginal edge
probabilities, and Intv-AUROC/AUPRC where the method infers intervention targets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline_lib import metrics as M

COVERAGE_LEVELS = (0.5, 0.9)


@dataclass(frozen=True)
class Queries:
    """The interventional queries of one task, over its real nodes.

    ``j, i: (Q,)`` intervened / outcome node (indices into the real nodes), ``a: (Q,)``
    intervention values, ``samples: (Q, M)`` true samples of ``X_i`` under ``do(X_j = a)``.
    """

    j: np.ndarray
    a: np.ndarray
    i: np.ndarray
    samples: np.ndarray

    def __len__(self) -> int:
        return len(self.j)


def real_nodes(task: dict) -> np.ndarray:
    """Indices of the real (unpadded) nodes of one task."""
    return np.flatnonzero(np.asarray(task["node_mask"], dtype=bool))


def make_queries(task: dict, max_queries: int | None = None, rng: np.random.Generator | None = None) -> Queries:
    """All single-target hard-intervention queries of one task (arrays of ONE task, no T axis).

    Regimes with several targets or soft interventions are skipped (they do not define a
    do(X_j = a) query). With ``max_queries`` a seeded subset is kept.
    """
    nodes = real_nodes(task)
    targets = np.asarray(task["int_targets"], dtype=bool)[:, nodes]  # (K, d_real)
    values = np.asarray(task["int_values"])[:, nodes]
    x_int = np.asarray(task["x_int"])[..., nodes]  # (K, n_int, d_real)
    js, as_, is_, ss = [], [], [], []
    for k in np.flatnonzero(targets.sum(1) == 1):
        j = int(np.flatnonzero(targets[k])[0])
        if not np.isfinite(values[k, j]):
            continue
        for i in range(len(nodes)):
            if i != j:
                js.append(j), as_.append(float(values[k, j])), is_.append(i), ss.append(x_int[k, :, i])
    if not js:
        raise ValueError("int_targets: the task has no regime with a single hard target, so no do(X_j = a) query")
    q = Queries(np.array(js), np.array(as_), np.array(is_), np.stack(ss).astype(np.float64))
    if max_queries is not None and len(q) > max_queries:
        keep = np.sort((rng or np.random.default_rng(0)).choice(len(q), max_queries, replace=False))
        q = Queries(q.j[keep], q.a[keep], q.i[keep], q.samples[keep])
    return q


class InterventionalPredictor(Protocol):
    """What a method must answer per query to be scored on NLPID and calibration."""

    def log_density(self, q: Queries) -> np.ndarray:
        """(Q, M) log q(samples | do(X_j = a), D_obs)."""

    def intervals(self, q: Queries, levels: tuple[float, ...]) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        """Central predictive interval of X_i per query for each level: {level: (lower (Q,), upper (Q,))}."""


class MaceTNPPredictor:
    """Adapter: a trained MACE-TNP answers all queries of a task in one batched forward pass.

    ``x_obs: (N, d_real)`` the task's observational data on its real nodes (the same data
    the baselines see); quantiles by bisection on the predicted mixture CDF.
    """

    def __init__(self, model, x_obs: np.ndarray):
        self.model = model
        self.x_obs = np.asarray(x_obs, dtype=np.float32)

    def _mog(self, q: Queries):
        import torch

        x = torch.as_tensor(self.x_obs)[None].expand(len(q), *self.x_obs.shape)
        return self.model.predict(x, None, torch.as_tensor(q.j), torch.as_tensor(q.a, dtype=torch.float32),
                                  torch.as_tensor(q.i))

    def log_density(self, q: Queries) -> np.ndarray:
        import torch

        mog = self._mog(q)
        with torch.no_grad():
            y = torch.as_tensor(q.samples, dtype=mog.means.dtype, device=mog.means.device)
            return mog.log_prob(y).double().cpu().numpy()

    def intervals(self, q: Queries, levels: tuple[float, ...]) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        import torch

        mog = self._mog(q)  # one forward pass serves every level
        out = {}
        with torch.no_grad():
            for level in levels:
                lo = mog.quantile((1 - level) / 2).reshape(-1).double().cpu().numpy()
                hi = mog.quantile((1 + level) / 2).reshape(-1).double().cpu().numpy()
                out[level] = (lo, hi)
        return out


class PosteriorPredictor:
    """Adapter: a CausalPosterior (exact, DiBS, BaCaDI, DCDI) answers queries one by one.

    Intervals come from ``n_samples`` draws of ``sample_interventional`` (empirical
    quantiles): the posteriors have no closed-form quantiles in general.
    """

    def __init__(self, posterior, n_samples: int = 2000, seed: int = 0):
        self.posterior = posterior
        self.n_samples = n_samples
        self.seed = seed
        self.mc_stderr: list[float] = []

    def log_density(self, q: Queries) -> np.ndarray:
        out = np.empty_like(q.samples)
        for k in range(len(q)):
            est = self.posterior.interventional_log_density(int(q.j[k]), float(q.a[k]), int(q.i[k]), q.samples[k])
            out[k] = est.log_density
            self.mc_stderr.append(float(np.sqrt(np.sum(np.asarray(est.mc_stderr) ** 2))))
        return out

    def intervals(self, q: Queries, levels: tuple[float, ...]) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        probs = [p for level in levels for p in ((1 - level) / 2, (1 + level) / 2)]
        bounds = np.empty((len(q), len(probs)))
        rng = np.random.default_rng(self.seed)
        for k in range(len(q)):  # one draw per query serves every level
            xs = self.posterior.sample_interventional(int(q.j[k]), float(q.a[k]), self.n_samples, rng)[:, int(q.i[k])]
            bounds[k] = np.quantile(xs, probs)
        return {level: (bounds[:, 2 * n], bounds[:, 2 * n + 1]) for n, level in enumerate(levels)}


def score_interventional(predictor: InterventionalPredictor, q: Queries) -> dict[str, float]:
    """NLPID (sum and per-sample mean) and 50/90% interval coverage for one task."""
    logp = predictor.log_density(q)  # (Q, M)
    if not np.all(np.isfinite(logp)):
        raise FloatingPointError("log densities of the true interventional samples are not finite")
    per_query = [M.nlpid(lp) for lp in logp]
    out = {
        "nlpid": float(np.mean([r.sum for r in per_query])),
        "nlpid_per_sample": float(np.mean([r.mean for r in per_query])),
    }
    for level, (lo, hi) in predictor.intervals(q, COVERAGE_LEVELS).items():
        inside = (q.samples >= lo[:, None]) & (q.samples <= hi[:, None])
        out[f"coverage_{int(level * 100)}"] = float(inside.mean())
    # one number for the table: mean absolute deviation of coverage from nominal
    out["calibration_error"] = float(np.mean([abs(out[f"coverage_{int(lv * 100)}"] - lv) for lv in COVERAGE_LEVELS]))
    return out


def score_graph(posterior, true_adj: np.ndarray, true_targets: np.ndarray | None = None,
                n_graph_samples: int = 100, seed: int = 0) -> dict[str, float]:
    """E-SHD, E-SID, edge AUROC/AUPRC and, where targets are inferred, Intv-AUROC/AUPRC.

    ``true_adj``/``true_targets`` restricted to the real nodes, like the posterior.
    """
    rng = np.random.default_rng(seed)
    graphs = posterior.sample_graphs(n_graph_samples, rng)
    probs = posterior.edge_probs()
    out = {
        "e_shd": float(M.expected_shd(true_adj, graphs)),
        "e_sid": float(M.expected_sid(true_adj, graphs)),
    }
    if true_adj.shape[0] > 1:
        out["edge_auroc"] = float(M.edge_auroc(true_adj, probs))
        out["edge_auprc"] = float(M.edge_auprc(true_adj, probs))
    tprobs = posterior.intervention_target_probs()
    if tprobs is not None and true_targets is not None:
        out["intv_auroc"] = float(M.intervention_auroc(true_targets, tprobs))
        out["intv_auprc"] = float(M.intervention_auprc(true_targets, tprobs))
    return out


def task_slice(batch: dict, t: int) -> dict:
    """The arrays of task ``t`` of a batch dict (drops the T axis)."""
    return {k: np.asarray(v[t]) for k, v in batch.items()}


def restrict(task: dict) -> dict:
    """One task's data restricted to its real nodes: what per-dataset baselines see."""
    nodes = real_nodes(task)
    return {
        "x_obs": np.asarray(task["x_obs"], dtype=np.float64)[:, nodes],
        "x_int": np.asarray(task["x_int"], dtype=np.float64)[..., nodes],
        "int_targets": np.asarray(task["int_targets"], dtype=bool)[:, nodes],
        "int_values": np.asarray(task["int_values"])[:, nodes],
        "adjacency": np.asarray(task["adjacency"])[np.ix_(nodes, nodes)].astype(np.uint8),
    }



def evaluate_baseline(name: str, config: dict | None, task: dict, *, max_queries: int | None = None,
                      seed: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Fit baseline ``name`` on one task (real nodes only) and score it.

    Returns (metrics, summary arrays to persist: edge probabilities and, where inferred,
    target probabilities). ``runtime_s`` is the fit time; scoring is not timed.
    """
    import time

    from pipeline_lib.baselines.registry import fit_baseline

    data = restrict(task)
    t0 = time.perf_counter()
    post = fit_baseline(name, data, config)
    fit_s = time.perf_counter() - t0
    metrics = {"runtime_s": fit_s}
    metrics.update(score_graph(post, data["adjacency"], data["int_targets"], seed=seed))
    q = make_queries(task, max_queries, np.random.default_rng(seed))
    pred = PosteriorPredictor(post, seed=seed)
    metrics.update(score_interventional(pred, q))
    if pred.mc_stderr:
        metrics["nlpid_mc_stderr"] = float(np.sqrt(np.mean(np.square(pred.mc_stderr))))
    summary = {"edge_probs": post.edge_probs()}
    tp = post.intervention_target_probs()
    if tp is not None:
        summary["target_probs"] = np.asarray(tp)
    return metrics, summary


def evaluate_amortized(model, task: dict, *, max_queries: int | None = None, seed: int = 0) -> dict[str, float]:
    """Score an amortized interventional model (MACE-TNP) on one task; ``runtime_s`` is inference time."""
    import time

    data = restrict(task)
    q = make_queries(task, max_queries, np.random.default_rng(seed))
    pred = MaceTNPPredictor(model, data["x_obs"])
    t0 = time.perf_counter()
    pred.log_density(q)
    runtime = time.perf_counter() - t0
    return {"runtime_s": runtime, **score_interventional(pred, q)}
