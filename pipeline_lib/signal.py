"""How much causal signal a prior carries: what NLPID can tell apart on it at all.

On a prior whose interventions barely move anything, the non-causal empty graph (the
observational marginal) is as good as the truth and no NLPID table says anything about any
method. Per prior, over the single-target hard queries ``(j, a, i)`` of ``n`` test tasks:

* ``signal_nats``: the mean over tasks of ``(empty - oracle) / M``, the per-sample NLPID gap
  between the observational marginal (BGe posterior predictive under the empty graph) and
  the true interventional law (:mod:`pipeline_lib.priors.oracle`): the most any method can
  gain by being causal;
* ``shift_sd``: mean (and median) of ``|E[x_i | do(x_j = a)] - E[x_i]| / sd(x_i)`` estimated
  from the stored samples, in observational standard deviations;
* ``share_above_0.1``: the share of queries whose interventional law differs from the
  marginal by more than 0.1 nats per sample.

Cost is bounded for large graphs: at most ``max_queries`` queries per task (a seeded subset;
a 20-node task has 95) and an oracle of ``n_mc`` = 5000 parent draws. The oracle's log
estimate is biased upwards by about Var / 2 (Jensen); per sample that is a few thousandths of
a nat at 5000 draws, an order below :data:`LOW_SIGNAL_NATS`.
"""
from __future__ import annotations

import numpy as np

#: below this per-sample gap (nats) a prior is flagged as carrying almost no causal signal
LOW_SIGNAL_NATS = 0.05


def prior_signal(config, n_tasks: int = 20, split: str = "test", max_queries: int = 12,
                 n_mc: int = 5000) -> dict[str, float]:
    """The signal figures of the module docstring over the first ``n_tasks`` tasks of ``split``
    (at most ``max_queries`` queries of each, drawn with the task's index as seed)."""
    from pipeline_lib.baselines.registry import fit_baseline
    from pipeline_lib.evaluation import make_queries
    from pipeline_lib.priors import sample_split_range
    from pipeline_lib.priors.oracle import TrueSCM
    from pipeline_lib.taskdata import restrict, task_slice

    n = min(n_tasks, config.n_tasks(split))
    batch = sample_split_range(config, split, 0, n)
    gaps, shifts = [], []
    per_task = []
    for t in range(n):
        task = task_slice(batch, t)
        data = restrict(task)
        try:
            q = make_queries(task, max_queries=max_queries, rng=np.random.default_rng([t, 11]))
        except ValueError:
            continue
        oracle = TrueSCM(config, split, t, n_mc=n_mc, check_x_obs=data["x_obs"])
        empty = fit_baseline("empty-graph", data)
        lo = oracle.log_density_batch(q.j, q.a, q.i, q.samples).log_density.mean(1)
        le = empty.log_density_batch(q.j, q.a, q.i, q.samples).log_density.mean(1)
        gap = lo - le  # (Q,) nats per sample
        gaps.append(gap)
        per_task.append(float(gap.mean()))
        mu, sd = data["x_obs"].mean(0), data["x_obs"].std(0)
        shifts.append(np.abs(q.samples.mean(1) - mu[q.i]) / sd[q.i])
    if not gaps:
        raise ValueError("the prior has no single-target hard regime: no interventional query to measure")
    g, s = np.concatenate(gaps), np.concatenate(shifts)
    out = {"signal_nats": float(np.mean(per_task)), "shift_sd_mean": float(s.mean()),
           "shift_sd_median": float(np.median(s)), "share_above_0.1": float((g > 0.1).mean()),
           "n_tasks": len(per_task), "n_queries": int(len(g))}
    out["low_signal"] = bool(out["signal_nats"] < LOW_SIGNAL_NATS)
    return out
