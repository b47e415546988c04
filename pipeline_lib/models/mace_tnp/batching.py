"""MACE-TNP training examples from prior tasks (one example per task, vectorised over tasks)."""
from __future__ import annotations

from functools import partial

import numpy as np

from pipeline_lib.training.batching import Batch, TaskDict, random_argmax, random_subset, require_fields


def mace_tnp_batch(
    tasks: TaskDict,
    rng: np.random.Generator,
    *,
    n_obs_min: int,
    n_obs_max: int,
    n_query: int | None = None,
    log_uniform: bool = False,
    per_batch: bool = False,
) -> Batch:
    """One MACE-TNP training example per task.

    For every task ``t`` (vectorised over tasks):

    * regime ``k`` uniform among regimes with exactly one hard target;
      ``j`` = that target, ``a = int_values[t, k, j]``;
    * outcome ``i`` uniform among real nodes ``!= j``;
    * ``n_t ~ U{lo..hi}`` with ``hi = min(n_obs_max, n_obs)``, ``lo = min(n_obs_min, hi)``
      (``log_uniform``: ``n_t = floor(exp(U[log lo, log(hi + 1)))``, so every scale of
      ``n`` gets equal training weight; ``per_batch``: one ``n`` shared by all tasks of
      the batch, which removes padding and makes the mean cost that of the mean ``n``);
      a uniform random subset of ``n_t`` observational rows, padded to
      ``max_t n_t`` rows (``obs_mask`` marks the real ones; padding to the batch
      maximum rather than ``hi`` saves attention cost on small draws);
    * targets ``y = x_int[t, k, :, i]`` (optionally a random subset of ``n_query``).

    Returns numpy arrays: ``x_obs (T, n_max, d) f32``, ``obs_mask (T, n_max) bool``,
    ``node_mask (T, d) bool``, ``int_node (T,) i64``, ``int_value (T,) f32``,
    ``out_node (T,) i64``, ``y (T, M) f32``, ``y_mask (T, M) bool``, ``regime (T,) i64``.
    """
    require_fields(tasks, ("x_obs", "node_mask", "int_targets", "int_values", "x_int"))
    x_obs = np.asarray(tasks["x_obs"], dtype=np.float32)
    node_mask = np.asarray(tasks["node_mask"], dtype=bool)
    targets = np.asarray(tasks["int_targets"], dtype=bool)
    values = np.asarray(tasks["int_values"], dtype=np.float32)
    x_int = np.asarray(tasks["x_int"], dtype=np.float32)
    t_n, n_total, d = x_obs.shape
    if n_obs_min < 1 or n_obs_min > n_obs_max:
        raise ValueError(f"need 1 <= n_obs_min <= n_obs_max, got {n_obs_min}, {n_obs_max}")
    if targets.shape[0] != t_n or targets.shape[2] != d:
        raise ValueError(f"int_targets must be (T, K, d) = ({t_n}, K, {d}), got {targets.shape}")
    ar = np.arange(t_n)

    single = (targets.sum(-1) == 1) & np.isfinite(np.where(targets, values, 0.0)).all(-1)
    if not single.any(-1).all():
        bad = np.flatnonzero(~single.any(-1))[:5]
        raise ValueError(f"int_targets: tasks {bad.tolist()} have no regime with exactly one hard target")
    k = random_argmax(rng, single)
    j = targets[ar, k].argmax(-1)
    a = values[ar, k, j]

    other = node_mask & (np.arange(d)[None, :] != j[:, None])
    if not other.any(-1).all():
        raise ValueError("node_mask: every task needs a real node besides the intervened one")
    i = random_argmax(rng, other)

    hi = min(n_obs_max, n_total)
    lo = min(n_obs_min, hi)
    size = 1 if per_batch else t_n
    if log_uniform:
        n_t = np.floor(np.exp(rng.uniform(np.log(lo), np.log(hi + 1), size=size))).astype(np.int64)
        n_t = np.clip(n_t, lo, hi)
    else:
        n_t = rng.integers(lo, hi + 1, size=size)
    n_t = np.broadcast_to(n_t, (t_n,))
    n_max = int(n_t.max())
    rows = random_subset(rng, t_n, n_total, n_max)
    x_sub = np.take_along_axis(x_obs, rows[:, :, None], axis=1)
    obs_mask = np.arange(n_max)[None, :] < n_t[:, None]

    y = x_int[ar, k, :, i]  # (T, n_int)
    if n_query is not None and n_query < y.shape[1]:
        cols = random_subset(rng, t_n, y.shape[1], n_query)
        y = np.take_along_axis(y, cols, axis=1)
    return {
        "x_obs": np.ascontiguousarray(x_sub),
        "obs_mask": obs_mask,
        "node_mask": node_mask,
        "int_node": j.astype(np.int64),
        "int_value": a.astype(np.float32),
        "out_node": i.astype(np.int64),
        "y": np.ascontiguousarray(y, dtype=np.float32),
        "y_mask": np.isfinite(y),
        "regime": k.astype(np.int64),
    }


def make_batch(cfg) -> "partial":
    """The ``(tasks, rng) -> batch`` builder for a :class:`MaceTNPConfig` (its data settings)."""
    return partial(mace_tnp_batch, n_obs_min=cfg.n_obs_min, n_obs_max=cfg.n_obs_max, n_query=cfg.n_query,
                   log_uniform=cfg.n_obs_log_uniform, per_batch=cfg.n_obs_per_batch)
