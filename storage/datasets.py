"""torch datasets over priors: stored tasks (`PriorTaskDataset`) and fresh streamed tasks (`PriorStream`).

`PriorTaskDataset` reads one task at a time from a finalized Zarr store. A Zarr chunk holds
`chunk_tasks` tasks and is decoded as a whole, so the dataset keeps the last few decoded
chunks (LRU); with `ChunkShuffleSampler`, which visits chunks in random order and tasks in
random order within a chunk, each chunk is decoded once per epoch instead of once per task.

`PriorStream` draws tasks on the fly with `pipeline_lib.priors.sample_tasks` (infinite data
for meta-training): batch b of DataLoader worker w comes from the generator
``np.random.default_rng([seed, w])``, so a (seed, num_workers) pair reproduces the stream.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from pipeline_lib.priors import PriorConfig, sample_tasks
from storage.prior_store import PriorStore

__all__ = ["ChunkShuffleSampler", "PriorStream", "PriorTaskDataset"]


class PriorTaskDataset(Dataset):
    """Task `i` of `split` of a finalized store as a dict of tensors without the task axis.

    ``ds[i]["x_obs"]: (n_obs, d)``, ``ds[i]["x_int"]: (K, n_int, d)``, ``ds[i]["adjacency"]:
    (d, d)`` uint8, and so on for every stored array (see storage.prior_store).
    `store` is a PriorStore or the path of one; the Zarr handle is reopened lazily in each
    DataLoader worker process (handles are not shipped between processes).
    """

    def __init__(self, store: PriorStore | str | Path, split: str, cache_chunks: int = 2):
        if cache_chunks < 1:
            raise ValueError(f"cache_chunks must be >= 1, got {cache_chunks}")
        self.path = Path(store.path if isinstance(store, PriorStore) else store)
        self._store = store if isinstance(store, PriorStore) else PriorStore.open(self.path)
        self.split = split
        self.n = self._store.n_tasks(split)
        self.chunk_tasks = self._store.chunk_tasks
        self.cache_chunks = cache_chunks
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.n <= index < self.n:
            raise IndexError(f"task index {index} out of range for {self.n} {self.split} tasks")
        index %= self.n
        chunk, offset = divmod(index, self.chunk_tasks)
        block = self._chunk(chunk)
        # copy: the cached block must not be aliased by tensors the caller may modify
        return {k: torch.from_numpy(v[offset].copy()) for k, v in block.items()}

    def _chunk(self, chunk: int) -> dict[str, np.ndarray]:
        if chunk in self._cache:
            self._cache.move_to_end(chunk)
            return self._cache[chunk]
        if self._store is None:
            self._store = PriorStore.open(self.path)
        start = chunk * self.chunk_tasks
        block = self._store.read(self.split, start, min(start + self.chunk_tasks, self.n))
        self._cache[chunk] = block
        if len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return block

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_store"], state["_cache"] = None, OrderedDict()
        return state


class ChunkShuffleSampler(Sampler[int]):
    """Random permutation of task indices that keeps each storage chunk contiguous.

    Chunks are visited in a random order and the tasks of a chunk in a random order, so a
    `PriorTaskDataset` decodes every chunk once per epoch. The permutation of epoch e is a
    function of ``(seed, e)``; call `set_epoch` between epochs (as with DistributedSampler).
    """

    def __init__(self, dataset: PriorTaskDataset, seed: int = 0):
        self.n, self.chunk_tasks, self.seed, self.epoch = len(dataset), dataset.chunk_tasks, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n_chunks = -(-self.n // self.chunk_tasks)
        for c in rng.permutation(n_chunks).tolist():
            start = c * self.chunk_tasks
            yield from (start + rng.permutation(min(self.chunk_tasks, self.n - start))).tolist()


class PriorStream(IterableDataset):
    """Endless (or `n_batches` long) stream of freshly sampled task batches.

    Yields dicts of tensors with a leading batch axis, e.g. ``x_obs: (batch_size, n_obs, d)``;
    use with ``DataLoader(stream, batch_size=None)``. Each DataLoader worker w draws from
    ``default_rng([seed, w])`` and yields its share of the `n_batches`.
    """

    def __init__(self, config: PriorConfig, batch_size: int, seed: int = 0, n_batches: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n_batches is not None and n_batches < 0:
            raise ValueError(f"n_batches must be >= 0 or None, got {n_batches}")
        self.config, self.batch_size, self.seed, self.n_batches = config, batch_size, seed, n_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, worker])
        if self.n_batches is None:
            count = None
        else:  # batches worker, worker + n_workers, ... of the n_batches
            count = len(range(worker, self.n_batches, n_workers))
        produced = 0
        while count is None or produced < count:
            batch = sample_tasks(self.config, self.batch_size, rng)
            yield {k: torch.from_numpy(v) for k, v in batch.items()}
            produced += 1
