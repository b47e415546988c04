"""generate_prior on a real Dask scheduler with two worker *processes* writes the same bytes
as a local run.

Setup: ``dask scheduler`` + 2 x ``dask worker --nthreads 1`` on loopback, and the session's
real Prefect server (worker processes need a shared API: with Prefect's ephemeral API each
worker process would start its own server on one SQLite file, "database is locked").
The flow runs in this process with ``DASK_SCHEDULER_ADDRESS`` set, so its chunk tasks are
shipped to the worker processes, which write disjoint Zarr chunks of one store.
"""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from conftest import free_tcp_port, require_binary

pytestmark = pytest.mark.service

# 4 + 2 + 2 tasks in chunks of 2: 4 chunk tasks spread over 2 workers.
TINY_PRIOR = {
    "name": "svc-lin-3node",
    "seed": 7,
    "graph": {"kind": "erdos_renyi", "n_nodes": 3, "expected_parents": 0.5},
    "mechanism": {"kind": "linear"},
    "interventions": {"n_regimes": 2, "kind": "hard", "max_targets": 1},
    "n_obs": 16,
    "n_int": 8,
    "splits": {"train": 4, "val": 2, "test": 2},
    "chunk_tasks": 2,
}


@pytest.fixture(scope="module")
def dask_scheduler(services, prefect_server):
    """Address of a scheduler with 2 single-threaded worker processes, all on loopback."""
    dask = require_binary("dask")
    port = free_tcp_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = services.start(
        "dask-scheduler", [str(dask), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    )
    workers = [
        services.start(
            f"dask-worker-{i}",
            [str(dask), "worker", address, "--nthreads", "1", "--no-dashboard", "--no-nanny", "--name", f"w{i}"],
            env=prefect_server.env,
        )
        for i in range(2)
    ]
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
    yield address
    for w in workers:
        w.stop()
    scheduler.stop()


def _read_store(path):
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    arrays = {
        f"{split}/{name}": np.asarray(group[split][name][:])
        for split in ("train", "val", "test")
        for name in sorted(group[split].array_keys())
    }
    return dict(group.attrs), arrays


def _write_locally(config, root):
    """The reference store: every chunk sampled and written in this process, no Prefect, no Dask."""
    from pipeline_lib.priors import sample_split_range
    from storage.prior_store import PriorStore

    store = PriorStore.create_or_open(root, config)
    for split, chunk_index, start, stop in store.pending_chunks():
        store.write_chunk(split, chunk_index, sample_split_range(config, split, start, stop))
    store.finalize()
    return store.path


def test_generate_prior_on_dask_processes_matches_local(dask_scheduler, prefect_server, tmp_path, monkeypatch):
    from distributed import Client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.generate import generate_prior
    from pipeline_lib.priors import PriorConfig

    config = PriorConfig.model_validate(TINY_PRIOR)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", dask_scheduler)
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        remote_path = generate_prior(config, root=str(tmp_path / "remote"), n_workers=2)
    local_path = _write_locally(config, tmp_path / "local")

    # The chunk tasks really ran on the scheduler's worker processes.
    with Client(dask_scheduler, timeout=30) as client:
        per_worker = client.run(lambda dask_worker: len(dask_worker.data) + len(dask_worker.state.log))
        assert len(per_worker) == 2
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert any("generate_chunk" in p or "generate-" in p for p in prefixes), prefixes

    remote_attrs, remote_arrays = _read_store(remote_path)
    local_attrs, local_arrays = _read_store(local_path)
    assert remote_attrs["hash"] == local_attrs["hash"] == config.content_hash()
    assert remote_attrs["checksums"] == local_attrs["checksums"]
    assert set(remote_arrays) == set(local_arrays)
    assert "train/chunk_done" in remote_arrays and remote_arrays["train/chunk_done"].tolist() == [1, 1]
    for key in sorted(local_arrays):
        a, b = remote_arrays[key], local_arrays[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert a.tobytes() == b.tobytes(), f"{key} differs between the Dask-process and the local store"
    # Not a vacuous comparison: the samples are non-trivial.
    assert np.abs(local_arrays["train/x_obs"]).sum() > 0
