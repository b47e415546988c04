"""Flow that generates a prior into its Zarr store, chunk by chunk, on Dask.

Pipeline::

    PriorConfig ──> store_lock ──> PriorStore.create_or_open
                          v
          damaged_chunks: re-check every marked chunk (file, decoding, digest);
          invalidate the bad ones (a finalized store loses its checksums first)
                          ──(complete and intact?)──> return path (no work)
                          │ pending chunks
                          v
          subflow "generate-prior-chunks" on a DaskTaskRunner(n_workers)
             generate_chunk(split, c) for every pending chunk, in parallel
                          v
          PriorStore.finalize (checksums last) ──> event causalmeta.prior.updated

How `n_workers` is honoured: a Prefect flow's task runner is fixed when the flow object is
built, but the worker count is a run-time parameter. `generate_prior` is therefore a plain
flow (deployable, parameters validated) that runs the chunk tasks in a subflow rebuilt per
call with ``generate_prior_chunks.with_options(task_runner=make_task_runner(n_workers))``.
The runner is threaded Dask workers locally, or the scheduler at $DASK_SCHEDULER_ADDRESS.

Resume and repair: completed chunks carry markers and digests in the store, so re-running
after a crash, a cancelled run or damage to the files (deleted, truncated or altered chunks)
samples only the chunks still pending or failing their digests; the bytes equal those of an
uninterrupted run because every task is seeded by its own index.

One run per store at a time: the whole run holds :func:`storage.prior_store.store_lock`, so a
second run of the same config (another process or thread) waits, then finds the store
complete and writes nothing. The lock is per run, not per chunk: chunk tasks run inside it.
"""
from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.events import emit_event
from prefect.futures import as_completed

from flows.runtime import check_root, make_task_runner
from pipeline_lib.priors import PriorConfig
from storage.prior_store import PriorStore, store_lock, store_path
from tasks.artifacts import Progress, artifact_key, publish_markdown
from tasks.generate import generate_chunk

__all__ = ["PRIOR_UPDATED_EVENT", "generate_prior", "generate_prior_chunks", "prior_resource"]

PRIOR_UPDATED_EVENT = "causalmeta.prior.updated"


def training_label(methods=()) -> str:
    """``,m1,m2,``: the methods the caller trains on a new store itself (``,`` for none).

    Delimited on both sides so that a trigger can match one exact name with a glob
    (``!*,mace-tnp,*``: "unless mace-tnp is trained by the caller", deploy/serve.py).
    """
    return "," + "".join(f"{m}," for m in sorted(set(methods)))


def prior_resource(store: PriorStore, training=()) -> dict[str, str]:
    """The Prefect event resource that names a stored prior (deployment triggers match on it).

    ``causalmeta.prior.training`` lists the methods the generating flow trains on the store
    right after (a benchmark): the retrain trigger skips those, so one benchmark produces one
    ``meta-train`` run per (method, prior), not a second, event-triggered one.
    """
    return {
        "prefect.resource.id": f"causalmeta.prior.{store.hash[:12]}",
        "causalmeta.prior.hash": store.hash,
        "causalmeta.prior.name": store.config.name,
        "causalmeta.prior.path": str(store.path),
        "causalmeta.prior.training": training_label(training),
    }


def _run_name() -> str:
    """``generate-<prior name>``: what the Prefect UI lists for the run."""
    from prefect.runtime import flow_run

    config = flow_run.parameters.get("config")
    name = config.get("name") if isinstance(config, dict) else getattr(config, "name", "prior")
    return f"generate-{name}"


@flow(name="generate-prior-chunks")
def generate_prior_chunks(config_json: str, root: str, chunks: list[tuple[str, int, int, int]]) -> list[dict]:
    """Run `generate_chunk` for every (split, chunk_index, start, stop) on the flow's task runner."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    futures = [generate_chunk.submit(config_json, root, *chunk) for chunk in chunks]
    name = PriorConfig.model_validate_json(config_json).name
    progress = Progress(artifact_key("prior", name, "chunks"), len(futures), f"prior {name}: chunks written")
    summaries, n_tasks = [], 0
    for done, future in enumerate(as_completed(futures), start=1):
        summary = future.result()
        summaries.append(summary)
        n_tasks += summary["n_tasks"]
        elapsed = time.perf_counter() - t0
        logger.info(
            "progress %d/%d chunks (%s[%d]), %.1f tasks/s",
            done, len(futures), summary["split"], summary["chunk_index"], n_tasks / max(elapsed, 1e-9),
        )
        progress.update(done, f"{n_tasks / max(elapsed, 1e-9):.1f} tasks/s")
    return summaries


@flow(name="generate-prior", flow_run_name=_run_name)
def generate_prior(config: PriorConfig, root: str = ".causalmeta", n_workers: int = 2,
                   training: list[str] | None = None) -> str:
    """Generate (or resume, or just locate) the store of `config` under `root`; return its path.

    A complete store whose chunks all pass their digests returns without running any chunk
    task. Otherwise every pending or damaged chunk is sampled on `n_workers` Dask workers,
    the store is finalized (checksums written last) and the event
    ``causalmeta.prior.updated`` is emitted with resource :func:`prior_resource`.
    ``training``: methods the caller trains on the store itself (the event says so, and the
    retrain trigger leaves them alone).
    """
    logger = get_run_logger()
    root = check_root(root)  # workers (threads or remote) must see one absolute root
    with store_lock(
        store_path(root, config),
        on_wait=lambda holder: logger.info("another generate run holds the store lock (%s); waiting", holder),
    ):
        path = _generate_locked(config, root, n_workers, training or ())
    _publish_summary(path)
    return path


def _publish_summary(path: str) -> None:
    """The Prefect artifact of the stored prior (name, hash, tasks, size, causal signal)."""
    from storage.report import prior_summary, prior_summary_markdown

    try:
        summary = prior_summary(PriorStore.open(path))
    except Exception as exc:  # the store is done; a summary that cannot be computed must not fail the run
        get_run_logger().warning("prior summary not published: %s", exc)
        return
    publish_markdown(artifact_key("prior", summary["name"]), prior_summary_markdown(summary),
                     description=f"stored prior {summary['name']}-{summary['hash'][:12]}")


def _generate_locked(config: PriorConfig, root: str, n_workers: int, training=()) -> str:
    logger = get_run_logger()
    store = PriorStore.create_or_open(root, config)
    damaged = store.damaged_chunks()
    if damaged:
        logger.warning(
            "prior %s: %d damaged chunk(s) will be regenerated: %s", config.name, len(damaged),
            "; ".join(problem for _, _, problem in damaged[:10]),
        )
        store.invalidate([(split, c) for split, c, _ in damaged])
    if store.is_complete:
        logger.info("prior %s already complete and intact at %s", config.name, store.path)
        return str(store.path)
    pending = store.pending_chunks()
    total = sum(store.n_chunks(s) for s in ("train", "val", "test"))
    logger.info(
        "prior %s (%s): %d of %d chunks pending, %d workers",
        config.name, store.hash[:12], len(pending), total, n_workers,
    )
    if pending:
        runner = make_task_runner(n_workers)
        generate_prior_chunks.with_options(task_runner=runner)(config.to_json(), root, pending)
    store.finalize()
    logger.info("prior %s finalized at %s", config.name, store.path)
    emit_event(
        event=PRIOR_UPDATED_EVENT,
        resource=prior_resource(store, training),
        payload={"n_chunks_written": len(pending), "generator_version": store.attrs["generator_version"]},
    )
    return str(store.path)
