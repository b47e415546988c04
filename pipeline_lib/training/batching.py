"""Turn prior task dictionaries into model batches, deterministically per step.

A *task dict* is what ``pipeline_lib.priors.sample_tasks`` returns and what a
stored Zarr prior reads back (see DESIGN.md, "Data contract")::

    adjacency (T, d, d) uint8, node_mask (T, d) bool, x_obs (T, n_obs, d) f32,
    int_targets (T, K, d) bool, int_values (T, K, d) f32, x_int (T, K, n_int, d) f32, ...

A *batch source* is a callable ``source(step) -> batch`` whose output is a pure
function of ``(seed, step)``: every random choice for step ``s`` is drawn from
``numpy.random.default_rng([seed, s])``. A resumed run therefore sees exactly
the batches an uninterrupted run would have seen, without replaying a stream.
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol

import numpy as np

TaskDict = Mapping[str, np.ndarray]
Batch = dict[str, np.ndarray]


class BatchSource(Protocol):
    """``source(step) -> batch``; deterministic in ``(seed, step)``."""

    def __call__(self, step: int) -> Batch: ...


def _require(tasks: TaskDict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in tasks]
    if missing:
        raise ValueError(f"task dict is missing fields {missing}")


def _random_argmax(rng: np.random.Generator, allowed: np.ndarray) -> np.ndarray:
    """Uniform choice of one True position along the last axis, vectorised: ``(..., L) -> (...)``."""
    scores = np.where(allowed, rng.random(allowed.shape), -1.0)
    return scores.argmax(-1)


def _random_subset(rng: np.random.Generator, n_rows: int, total: int, n_take: int) -> np.ndarray:
    """``(n_rows, n_take)`` indices, each row a uniform random subset (random order) of ``range(total)``."""
    return np.argsort(rng.random((n_rows, total)), axis=1)[:, :n_take]


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
    _require(tasks, ("x_obs", "node_mask", "int_targets", "int_values", "x_int"))
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
    k = _random_argmax(rng, single)
    j = targets[ar, k].argmax(-1)
    a = values[ar, k, j]

    other = node_mask & (np.arange(d)[None, :] != j[:, None])
    if not other.any(-1).all():
        raise ValueError("node_mask: every task needs a real node besides the intervened one")
    i = _random_argmax(rng, other)

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
    rows = _random_subset(rng, t_n, n_total, n_max)
    x_sub = np.take_along_axis(x_obs, rows[:, :, None], axis=1)
    obs_mask = np.arange(n_max)[None, :] < n_t[:, None]

    y = x_int[ar, k, :, i]  # (T, n_int)
    if n_query is not None and n_query < y.shape[1]:
        cols = _random_subset(rng, t_n, y.shape[1], n_query)
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


MakeBatch = Callable[[TaskDict, np.random.Generator], Batch]


class StreamSource:
    """Fresh tasks every step from a sampler ``sample_fn(n_tasks, rng) -> task dict``.

    Step ``s`` uses ``rng = default_rng([seed, s])`` for both the tasks and the
    example construction, so the batch is a pure function of ``(seed, s)``.
    """

    def __init__(self, sample_fn: Callable[[int, np.random.Generator], TaskDict], make_batch: MakeBatch,
                 batch_size: int, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sample_fn = sample_fn
        self.make_batch = make_batch
        self.batch_size = batch_size
        self.seed = seed

    def __call__(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        return self.make_batch(self.sample_fn(self.batch_size, rng), rng)


class PoolSource:
    """Batches from a fixed pool of tasks (e.g. a split read from a Zarr prior).

    Epoch ``e`` visits the pool in the order ``default_rng([seed, e]).permutation(T)``;
    step ``s`` lies in epoch ``e = s // (T // B)`` at offset ``s mod (T // B)``.
    Example construction for step ``s`` uses ``default_rng([seed, s, 1])``.
    With ``shuffle=False`` (validation) step ``s`` takes tasks
    ``[(s B) mod T, ...)`` in order.
    """

    def __init__(self, tasks: TaskDict, make_batch: MakeBatch, batch_size: int, seed: int, shuffle: bool = True):
        if "x_obs" not in tasks:
            raise ValueError("task pool needs field 'x_obs'")
        self.tasks = {k: np.asarray(v) for k, v in tasks.items()}
        self.n_tasks = int(self.tasks["x_obs"].shape[0])
        if not 1 <= batch_size <= self.n_tasks:
            raise ValueError(f"batch_size must be in [1, {self.n_tasks}] (pool size), got {batch_size}")
        self.make_batch = make_batch
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle

    def indices(self, step: int) -> np.ndarray:
        per_epoch = self.n_tasks // self.batch_size
        if self.shuffle:
            epoch, r = divmod(step, per_epoch)
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_tasks)
            return np.sort(perm[r * self.batch_size:(r + 1) * self.batch_size])
        start = (step % per_epoch) * self.batch_size
        return np.arange(start, start + self.batch_size)

    def __call__(self, step: int) -> Batch:
        idx = self.indices(step)
        sub = {k: v[idx] for k, v in self.tasks.items()}
        return self.make_batch(sub, np.random.default_rng([self.seed, step, 1]))


def prior_stream(prior_config, make_batch: MakeBatch, batch_size: int, seed: int) -> StreamSource:
    """A :class:`StreamSource` over ``pipeline_lib.priors.sample_tasks(prior_config, n, rng)``."""
    from pipeline_lib.priors import sample_tasks

    return StreamSource(lambda n, rng: sample_tasks(prior_config, n, rng), make_batch, batch_size, seed)
