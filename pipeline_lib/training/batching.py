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


def require_fields(tasks: TaskDict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in tasks]
    if missing:
        raise ValueError(f"task dict is missing fields {missing}")


def random_argmax(rng: np.random.Generator, allowed: np.ndarray) -> np.ndarray:
    """Uniform choice of one True position along the last axis, vectorised: ``(..., L) -> (...)``."""
    scores = np.where(allowed, rng.random(allowed.shape), -1.0)
    return scores.argmax(-1)


def random_subset(rng: np.random.Generator, n_rows: int, total: int, n_take: int) -> np.ndarray:
    """``(n_rows, n_take)`` indices, each row a uniform random subset (random order) of ``range(total)``."""
    return np.argsort(rng.random((n_rows, total)), axis=1)[:, :n_take]


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
