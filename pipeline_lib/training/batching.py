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


class ChunkedSource:
    """Batches from a stored split read chunk by chunk, with a background prefetch.

    The split is a list of chunks ``bounds[c] = (start, stop)`` read by
    ``read_range(start, stop) -> task dict`` (a Zarr store: one read per chunk, never a
    random gather across chunks). Epoch ``e`` visits the chunks in the order
    ``pi_e = default_rng([seed, e]).permutation(C)``; consecutive chunks of ``pi_e`` form
    windows of ``window_chunks`` chunks, the tasks of window ``w`` are shuffled by
    ``default_rng([seed, e, w])``, and each window yields ``floor(n_w / B)`` batches of ``B``
    consecutive shuffled tasks (the remainder of a window is skipped this epoch, a different
    remainder in the next). Example construction for step ``s`` uses ``default_rng([seed, s, 1])``.

    So the batch of step ``s`` is a pure function of ``(seed, s)``: a run resumed at step
    ``s`` reads exactly the window it needs, whatever was prefetched before the crash.
    While window ``w`` is consumed, window ``w + 1`` is read in a background thread.
    """

    def __init__(self, read_range: Callable[[int, int], TaskDict], bounds: list[tuple[int, int]],
                 make_batch: MakeBatch, batch_size: int, seed: int, window_chunks: int = 4):
        if not bounds:
            raise ValueError("the stored split has no chunks")
        sizes = np.array([b - a for a, b in bounds])
        if batch_size < 1 or window_chunks < 1:
            raise ValueError(f"batch_size and window_chunks must be >= 1, got {batch_size}, {window_chunks}")
        if sizes.sum() < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {int(sizes.sum())} tasks of the split")
        self.read_range, self.bounds, self.sizes = read_range, list(bounds), sizes
        self.make_batch, self.batch_size, self.seed = make_batch, batch_size, seed
        self.window_chunks = window_chunks if sizes[:window_chunks].sum() >= batch_size else len(bounds)
        self._epochs: list[tuple[np.ndarray, np.ndarray]] = []  # (chunk order, batches per window)
        self._cum = [0]  # batches before epoch e
        self._cache: dict[tuple[int, int], dict] = {}
        self._pending: dict[tuple[int, int], object] = {}
        self._pool = None
        self.windows_read = 0

    @property
    def n_tasks(self) -> int:
        return int(self.sizes.sum())

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        while len(self._epochs) <= e:
            order = np.random.default_rng([self.seed, len(self._epochs)]).permutation(len(self.bounds))
            windows = [order[w:w + self.window_chunks] for w in range(0, len(order), self.window_chunks)]
            per = np.array([int(self.sizes[win].sum()) // self.batch_size for win in windows])
            self._epochs.append((order, per))
            self._cum.append(self._cum[-1] + int(per.sum()))
        return self._epochs[e]

    def locate(self, step: int) -> tuple[int, int, int]:
        """(epoch, window, batch offset in the window) of ``step``."""
        e = 0
        while True:
            _, per = self._epoch(e)
            if step < self._cum[e + 1]:
                break
            e += 1
        r = step - self._cum[e]
        w = int(np.searchsorted(np.cumsum(per), r, side="right"))
        return e, w, r - int(np.concatenate([[0], np.cumsum(per)])[w])

    def epochs_at(self, step: int) -> float:
        """Fraction of epochs completed after ``step`` batches."""
        e, w, off = self.locate(step)
        _, per = self._epoch(e)
        return e + (int(per[:w].sum()) + off) / max(1, int(per.sum()))

    def _load(self, e: int, w: int) -> dict:
        order, _ = self._epoch(e)
        chunks = order[w * self.window_chunks:(w + 1) * self.window_chunks]
        parts = [self.read_range(*self.bounds[c]) for c in chunks]
        tasks = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
        perm = np.random.default_rng([self.seed, e, w]).permutation(len(tasks[next(iter(tasks))]))
        self.windows_read += 1
        return {k: v[perm] for k, v in tasks.items()}

    def _next_window(self, e: int, w: int) -> tuple[int, int]:
        _, per = self._epoch(e)
        return (e, w + 1) if w + 1 < len(per) else (e + 1, 0)

    def _window(self, e: int, w: int) -> dict:
        key = (e, w)
        if key not in self._cache:
            fut = self._pending.pop(key, None)
            self._cache = {key: fut.result() if fut is not None else self._load(e, w)}
        nxt = self._next_window(e, w)
        self._epoch(nxt[0])  # epochs are built here, in the caller's thread only
        if nxt not in self._pending and nxt not in self._cache:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
            self._pending = {nxt: self._pool.submit(self._load, *nxt)}
        return self._cache[key]

    def __call__(self, step: int) -> Batch:
        e, w, off = self.locate(step)
        tasks = self._window(e, w)
        sub = {k: v[off * self.batch_size:(off + 1) * self.batch_size] for k, v in tasks.items()}
        return self.make_batch(sub, np.random.default_rng([self.seed, step, 1]))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
