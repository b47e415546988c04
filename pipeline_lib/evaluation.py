"""Scoring any method's answer on a test task, by what it answers (one metric definition each).

A method answers one task with an object implementing capabilities of
:mod:`pipeline_lib.posterior`; :func:`evaluate_answer` scores each capability it has:

* **graph** (:class:`GraphPosterior`): E-SHD and E-SID over posterior graph samples, edge
  AUROC/AUPRC of the marginal edge probabilities (where the task has a true graph);
* **targets** (:class:`TargetPosterior`): Intv-AUROC/AUPRC over (regime, node);
* **interventional** (:class:`InterventionalPredictor`): NLPID and calibration on the
  task's **queries**: for each regime ``k`` with a single hard target ``j`` (value ``a``) and
  each real outcome node ``i != j``, the ``M`` true interventional samples ``x_int[k, :, i]``.
  Per query (DESIGN.md, "NLPID"): ``NLPID = -sum_m log q(x_i^m | do(X_j = a), D_obs)`` (the
  papers' sum convention) and its per-sample mean. A task's value is the mean over its
  queries, so tasks weigh equally whatever their number of regimes and nodes; calibration is
  the fraction of true samples inside the central 50% and 90% predictive intervals;
* **generator** (:class:`SCMGenerator`): RMSE per node, averaged over nodes (the Cond-FiP
  paper's convention, the intervened node included), of noise prediction (vs ``noise_obs``),
  sample generation from the true noise (vs ``x_obs``), interventional generation from the
  true noise (vs ``x_cf``: each hard regime applied to ``x_obs``'s own noise) and
  counterfactuals with abducted noise (vs ``x_cf``); MMD of fresh observational samples
  against ``x_obs``.

A metric a method does not answer is absent from its record (the report prints "-").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline_lib import metrics as M
from pipeline_lib.posterior import InterventionalPredictor, capabilities
from pipeline_lib.taskdata import holdout_int_rows, real_nodes, restrict, task_slice

__all__ = ["Queries", "evaluate_amortized", "evaluate_amortized_many", "evaluate_answer", "evaluate_baseline", "make_queries", "real_nodes",
           "restrict", "score_generator", "score_graph", "score_interventional", "score_targets", "task_slice"]

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


def score_interventional(predictor: InterventionalPredictor, q: Queries, seed: int = 0) -> dict[str, float]:
    """NLPID (sum and per-sample mean) and 50/90% interval coverage for one task.

    ``nlpid_mc_stderr`` (where the densities are Monte Carlo estimates): the root mean
    square over queries of the standard error of each query's summed log density.
    """
    est = predictor.log_density_batch(q.j, q.a, q.i, q.samples)
    logp = np.asarray(est.log_density)  # (Q, M)
    if not np.all(np.isfinite(logp)):
        raise FloatingPointError("log densities of the true interventional samples are not finite")
    per_query = [M.nlpid(lp) for lp in logp]
    out = {
        "nlpid": float(np.mean([r.sum for r in per_query])),
        "nlpid_per_sample": float(np.mean([r.mean for r in per_query])),
    }
    err = np.sqrt(np.sum(np.asarray(est.mc_stderr) ** 2, axis=1))  # (Q,)
    if np.any(err > 0):
        out["nlpid_mc_stderr"] = float(np.sqrt(np.mean(err**2)))
    probs = np.array([p for level in COVERAGE_LEVELS for p in ((1 - level) / 2, (1 + level) / 2)])
    bounds = predictor.quantiles_batch(q.j, q.a, q.i, probs, np.random.default_rng(seed))  # one pass, all levels
    for n, level in enumerate(COVERAGE_LEVELS):
        lo, hi = bounds[:, 2 * n], bounds[:, 2 * n + 1]
        inside = (q.samples >= lo[:, None]) & (q.samples <= hi[:, None])
        out[f"coverage_{int(level * 100)}"] = float(inside.mean())
    # one number for the table: mean absolute deviation of coverage from nominal
    out["calibration_error"] = float(np.mean([abs(out[f"coverage_{int(lv * 100)}"] - lv) for lv in COVERAGE_LEVELS]))
    return out


def score_graph(posterior, true_adj: np.ndarray, n_graph_samples: int = 100, seed: int = 0) -> dict[str, float]:
    """E-SHD, E-SID and edge AUROC/AUPRC; ``true_adj`` restricted to the real nodes, like the answer."""
    graphs = posterior.sample_graphs(n_graph_samples, np.random.default_rng(seed))
    out = {"e_shd": float(M.expected_shd(true_adj, graphs)), "e_sid": float(M.expected_sid(true_adj, graphs))}
    if true_adj.shape[0] > 1:
        probs = posterior.edge_probs()
        out["edge_auroc"] = float(M.edge_auroc(true_adj, probs))
        out["edge_auprc"] = float(M.edge_auprc(true_adj, probs))
    return out


def score_targets(answer, true_targets: np.ndarray) -> dict[str, float]:
    """Intv-AUROC / Intv-AUPRC of ``(K, d)`` target probabilities against the true targets."""
    probs = np.asarray(answer.intervention_target_probs())
    if probs.shape != true_targets.shape:
        raise ValueError(f"target probabilities have shape {probs.shape}, the task's int_targets {true_targets.shape}")
    return {"intv_auroc": float(M.intervention_auroc(true_targets, probs)),
            "intv_auprc": float(M.intervention_auprc(true_targets, probs))}


def _hard_single_regimes(int_targets: np.ndarray, int_values: np.ndarray) -> list[tuple[int, int, float]]:
    """(regime, node, value) of every regime with one hard target."""
    out = []
    for k in np.flatnonzero(int_targets.sum(1) == 1):
        j = int(np.flatnonzero(int_targets[k])[0])
        if np.isfinite(int_values[k, j]):
            out.append((int(k), j, float(int_values[k, j])))
    return out


def score_generator(answer, data: dict, seed: int = 0) -> dict[str, float]:
    """Generator metrics of the module docstring; ``data`` = ``restrict(task)``.

    Interventional and counterfactual RMSE average over all nodes, the intervened one
    included (its error is 0: it is set, not generated), as the Cond-FiP paper reports them,
    and need ``x_cf`` in the task; noise and sample RMSE need ``noise_obs``. ``mmd_obs``
    compares fresh samples with the rows the answer was given (in-sample, not held out).
    """
    x, out = data["x_obs"], {}
    if "noise_obs" in data:
        u = data["noise_obs"]
        out["noise_rmse"] = float(np.mean(M.rmse(answer.predict_noise(x), u, axis=0)))
        out["sample_rmse"] = float(np.mean(M.rmse(answer.sample_observational(len(x), noise=u), x, axis=0)))
        if "x_cf" in data:
            int_err, cf_err = [], []
            for k, j, a in _hard_single_regimes(data["int_targets"], data["int_values"]):
                gen = answer.sample_do({j: a}, len(x), noise=u)
                int_err.append(np.mean(M.rmse(gen, data["x_cf"][k], axis=0)))
                cf = answer.counterfactual(x, {j: a})
                cf_err.append(np.mean(M.rmse(cf, data["x_cf"][k], axis=0)))
            if int_err:
                out["int_rmse"], out["cf_rmse"] = float(np.mean(int_err)), float(np.mean(cf_err))
    fresh = answer.sample_observational(len(x), rng=np.random.default_rng(seed))
    out["mmd_obs"] = float(M.mmd_rbf(fresh, x))
    return out


def evaluate_answer(answer, task: dict, *, max_queries: int | None = None, seed: int = 0,
                    n_graph_samples: int = 100) -> dict[str, float]:
    """Score every capability ``answer`` has on ONE task (arrays without the task axis).

    Graph and target metrics need the task's truth arrays (absent for imported data); a
    task without single-target hard regimes has no NLPID query and gets no NLPID.
    """
    caps = capabilities(answer)
    data = restrict(task)
    out: dict[str, float] = {}
    if "graph" in caps and "adjacency" in data:
        out.update(score_graph(answer, data["adjacency"], n_graph_samples, seed))
    if "targets" in caps:
        out.update(score_targets(answer, data["int_targets"]))
    if "interventional" in caps and _hard_single_regimes(data["int_targets"], data["int_values"]):
        out.update(score_interventional(answer, make_queries(task, max_queries, np.random.default_rng(seed)), seed))
    if "generator" in caps:
        out.update(score_generator(answer, data, seed))
    return out


def answer_summary(answer) -> dict[str, np.ndarray]:
    """Arrays worth persisting next to a record: edge and target probabilities where answered."""
    caps, out = capabilities(answer), {}
    if "graph" in caps:
        out["edge_probs"] = np.asarray(answer.edge_probs())
    if "targets" in caps:
        out["target_probs"] = np.asarray(answer.intervention_target_probs())
    return out


def evaluate_baseline(name: str, config, task: dict, *, max_queries: int | None = None,
                      seed: int = 0, info: dict | None = None,
                      int_holdout: float = 0.0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Fit baseline ``name`` on one task (real nodes only) and score what it answers.

    ``int_holdout``: the fraction of each regime's interventional rows kept out of the fit and
    scored by NLPID (:func:`~pipeline_lib.taskdata.holdout_int_rows`); 0 fits and scores all.

    Returns (metrics, summary arrays to persist). ``runtime_s`` is the fit time; scoring is
    not timed. ``info``, when given, receives ``converged`` (True / False / None: no test) and
    ``convergence`` (the note) of the fit (``baselines.registry.convergence_of``).
    """
    import time

    from pipeline_lib.baselines.registry import convergence_of, fit_baseline

    seen, scored = holdout_int_rows(task, int_holdout)
    t0 = time.perf_counter()
    try:
        answer = fit_baseline(name, restrict(seen), config)
    except Exception as exc:
        if int_holdout and "x_int" in task:
            exc.add_note(f"int_holdout {int_holdout:g}: the fit saw {np.asarray(seen['x_int']).shape[-2]} of "
                         f"{np.asarray(task['x_int']).shape[-2]} interventional rows per regime (the rest are "
                         "NLPID's test rows); a method that needs more rows needs int_holdout 0")
        raise
    metrics = {"runtime_s": time.perf_counter() - t0}
    if info is not None:
        info["converged"], info["convergence"] = convergence_of(name, answer)
    metrics.update(evaluate_answer(answer, scored, max_queries=max_queries, seed=seed))
    return metrics, answer_summary(answer)


def evaluate_amortized(method: str, model, task: dict, *, max_queries: int | None = None,
                       seed: int = 0, int_holdout: float = 0.0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Score a trained amortized ``method`` on one task: :func:`evaluate_amortized_many` of one."""
    return evaluate_amortized_many(method, model, [task], max_queries=max_queries, seeds=[seed],
                                   int_holdout=int_holdout)[0]


def evaluate_amortized_many(method: str, model, tasks: list[dict], *, max_queries: int | None = None,
                            seeds: list[int] | None = None,
                            int_holdout: float = 0.0) -> list[tuple[dict[str, float], dict[str, np.ndarray]]]:
    """Score a trained amortized ``method`` on several tasks through its registered ``predict``.

    Inference is batched over the tasks where the answers can do it: an answer class with a
    static ``prepare_many(answers, queries)`` computes every task's query answers in few
    forward passes (MACE-TNP stacks tasks of equal shape), and scoring then reuses them;
    otherwise each answer answers its own queries once. ``runtime_s`` of a task is the
    inference time of the whole call (every ``predict`` plus that pass: what a user waits
    for) divided by the number of tasks; ``runtime_batch_s`` is the whole, ``batch_tasks``
    the number of tasks. Task ``t`` uses ``seeds[t]`` (default 0) for its query subset and
    calibration, exactly as :func:`evaluate_answer` alone would. ``int_holdout``: as in
    :func:`evaluate_baseline` (the method answers from the seen rows, NLPID scores the rest).
    """
    import time

    from pipeline_lib.models.registry import get_method

    seeds = [0] * len(tasks) if seeds is None else list(seeds)
    if len(seeds) != len(tasks):
        raise ValueError(f"seeds: need one per task, got {len(seeds)} for {len(tasks)} tasks")
    if not tasks:
        return []
    spec = get_method(method)
    split = [holdout_int_rows(task, int_holdout) for task in tasks]
    tasks = [scored for _, scored in split]
    t0 = time.perf_counter()
    answers = [spec.predict(model, seen) for seen, _ in split]
    queries: list[Queries | None] = []
    for answer, task, seed in zip(answers, tasks, seeds):
        data = restrict(task)
        asks = "interventional" in capabilities(answer) and _hard_single_regimes(data["int_targets"], data["int_values"])
        queries.append(make_queries(task, max_queries, np.random.default_rng(seed)) if asks else None)
    asked = [t for t, q in enumerate(queries) if q is not None]
    prepare = getattr(type(answers[0]), "prepare_many", None)
    if asked and callable(prepare) and all(type(a) is type(answers[0]) for a in answers):
        prepare([answers[t] for t in asked], [(queries[t].j, queries[t].a, queries[t].i) for t in asked])
    else:
        for t in asked:
            answers[t].log_density_batch(queries[t].j, queries[t].a, queries[t].i, queries[t].samples)
    elapsed = time.perf_counter() - t0
    out = []
    for answer, task, seed in zip(answers, tasks, seeds):
        metrics = {"runtime_s": elapsed / len(tasks), "runtime_batch_s": elapsed, "batch_tasks": float(len(tasks))}
        metrics.update(evaluate_answer(answer, task, max_queries=max_queries, seed=seed))
        out.append((metrics, answer_summary(answer)))
    return out
