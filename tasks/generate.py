"""Prefect task that samples one chunk of a prior and writes it into its Zarr store."""
from __future__ import annotations

import time

from prefect import get_run_logger, task

from pipeline_lib.priors import PriorConfig, sample_split_range
from storage.prior_store import PriorStore, store_path

__all__ = ["generate_chunk"]


@task(
    retries=2,
    retry_delay_seconds=1,
    task_run_name="generate-{split}-{chunk_index}",
    # Chunks are written to Zarr, not returned: nothing to persist, no result cache.
    persist_result=False,
)
def generate_chunk(
    config_json: str, root: str, split: str, chunk_index: int, start: int, stop: int
) -> dict:
    """Sample tasks ``start:stop`` of `split` and write them as chunk `chunk_index`.

    The config travels as JSON (cheap to ship to any Dask worker) and the store is
    reopened here, so the task needs nothing but a shared path. Returns a small summary
    ``{"split", "chunk_index", "n_tasks", "written", "seconds"}``; ``written`` is False when
    the chunk already had its completion marker (a retry after a successful write).
    """
    t0 = time.perf_counter()
    config = PriorConfig.model_validate_json(config_json)
    store = PriorStore.open(store_path(root, config), config, allow_incomplete=True)
    if (start, stop) != store.chunk_range(split, chunk_index):
        raise ValueError(
            f"generate_chunk: tasks {start}:{stop} are not chunk {chunk_index} of {split!r} "
            f"(expected {store.chunk_range(split, chunk_index)})"
        )
    written = False
    if not store.chunk_is_done(split, chunk_index):
        arrays = sample_split_range(config, split, start, stop)
        written = store.write_chunk(split, chunk_index, arrays)
    seconds = time.perf_counter() - t0
    get_run_logger().info(
        "%s[%d] tasks %d:%d %s in %.2fs", split, chunk_index, start, stop,
        "written" if written else "already done", seconds,
    )
    return {"split": split, "chunk_index": chunk_index, "n_tasks": stop - start, "written": written, "seconds": seconds}
