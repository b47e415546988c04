"""The Prefect flow `generate_prior`: worker-count invariance, no-op on complete stores, event,
repair of a damaged store, one run at a time per store (issue 12, items 5 and 7)."""
from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from pathlib import Path

import threading
import time

import numpy as np
import pytest
import zarr

import flows.generate as generate_flow
from flows.runtime import make_task_runner
from pipeline_lib.priors import PriorConfig
from storage.prior_store import PriorStore


pytestmark = pytest.mark.usefixtures("prefect_harness")  # tests/conftest.py


def small_config() -> PriorConfig:
    return PriorConfig.from_dict(
        dict(
            name="flowtest",
            seed=3,
            graph={"kind": "erdos_renyi", "n_nodes": 4, "expected_parents": 1.0},
            mechanism={"kind": "linear"},
            interventions={"n_regimes": 2},
            n_obs=12,
            n_int=6,
            splits={"train": 9, "val": 3, "test": 3},
            chunk_tasks=3,
        )
    )


def array_bytes(path: str) -> dict[str, bytes]:
    g = zarr.open_group(path, mode="r")
    return {
        f"{s}/{k}": np.ascontiguousarray(g[s][k][:]).tobytes()
        for s in ("train", "val", "test")
        for k in g[s].array_keys()
        if k != "chunk_done"
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One small prior generated with 1 and with 2 workers (shared: flow runs cost seconds)."""
    config = small_config()
    root = tmp_path_factory.mktemp("gen")
    events: list[dict] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generate_flow, "emit_event", lambda **kw: events.append(kw))
        p1 = generate_flow.generate_prior(config, root=str(root / "w1"), n_workers=1)
        p2 = generate_flow.generate_prior(config, root=str(root / "w2"), n_workers=2)
    return config, p1, p2, events


def test_one_and_two_workers_give_identical_stores(generated):
    config, p1, p2, events = generated
    s1, s2 = PriorStore.open(p1, config), PriorStore.open(p2, config)
    assert s1.is_complete and s2.is_complete
    assert s1.checksums == s2.checksums
    assert array_bytes(p1) == array_bytes(p2)
    assert s1.verify() and s2.verify()
    assert p1.endswith(f"priors/flowtest-{config.content_hash()[:12]}.zarr")
    # one event per newly completed store, naming it
    assert [e["event"] for e in events] == ["causalmeta.prior.updated"] * 2
    res = events[1]["resource"]
    assert res["prefect.resource.id"] == f"causalmeta.prior.{config.content_hash()[:12]}"
    assert res["causalmeta.prior.hash"] == config.content_hash()
    assert res["causalmeta.prior.name"] == "flowtest" and res["causalmeta.prior.path"] == p2
    assert events[1]["payload"]["n_chunks_written"] == 5


def test_complete_store_does_no_work_and_partial_store_resumes(generated, monkeypatch):
    config, _, path, _ = generated
    root = str(Path(path).parents[1])
    ref_checksums = PriorStore.open(path).checksums
    events: list[dict] = []
    monkeypatch.setattr(generate_flow, "emit_event", lambda **kw: events.append(kw))
    written: list[tuple] = []
    real_write = PriorStore.write_chunk

    def spy(self, split, chunk_index, arrays):
        written.append((split, chunk_index))
        return real_write(self, split, chunk_index, arrays)

    monkeypatch.setattr(PriorStore, "write_chunk", spy)
    subflow_calls: list = []
    real_sub = generate_flow.generate_prior_chunks
    monkeypatch.setattr(generate_flow, "generate_prior_chunks", subflow_calls.append)
    assert generate_flow.generate_prior(config, root=root, n_workers=2) == path
    assert written == [] and subflow_calls == [] and events == []

    # damage the store: drop the checksums and the markers of two chunks -> only they rerun
    g = zarr.open_group(path, mode="r+")
    del g.attrs["checksums"]
    g["train/chunk_done"][1] = 0
    g["test/chunk_done"][0] = 0
    monkeypatch.setattr(generate_flow, "generate_prior_chunks", real_sub)
    assert generate_flow.generate_prior(config, root=root, n_workers=1) == path
    assert sorted(written) == [("test", 0), ("train", 1)]
    assert PriorStore.open(path).checksums == ref_checksums
    assert len(events) == 1 and events[0]["payload"]["n_chunks_written"] == 2


def chunk_file(path: str | Path, split: str, name: str, c: int) -> Path:
    arr = zarr.open_array(str(Path(path) / split / name), mode="r")
    return Path(path) / split / name / arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))


def store_files(path: str | Path) -> dict[str, bytes]:
    """Every file of the store except the root zarr.json (it holds timestamps)."""
    path = Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p != path / "zarr.json"}


def test_rerun_repairs_damaged_store_byte_identically(tmp_path, monkeypatch):
    """Issue 12 item 5: a complete store with lost or altered chunks is repaired, not re-certified."""
    from storage.prior_store import StoreCorruptedError

    config = small_config()
    monkeypatch.setattr(generate_flow, "emit_event", lambda **kw: None)
    path = generate_flow.generate_prior(config, root=str(tmp_path), n_workers=1)
    reference, ref_checksums = store_files(path), PriorStore.open(path).checksums

    chunk_file(path, "train", "x_obs", 1).unlink()
    raw = bytearray(chunk_file(path, "test", "x_int", 0).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk_file(path, "test", "x_int", 0).write_bytes(bytes(raw))
    with pytest.raises(StoreCorruptedError, match="train/x_obs chunk 1"):
        PriorStore.open(path).read("train")

    written: list[tuple[str, int]] = []
    real_write = PriorStore.write_chunk
    monkeypatch.setattr(PriorStore, "write_chunk",
                        lambda self, s, c, a: written.append((s, c)) or real_write(self, s, c, a))
    assert generate_flow.generate_prior(config, root=str(tmp_path), n_workers=1) == path
    assert sorted(written) == [("test", 0), ("train", 1)]  # only the damaged chunks
    repaired = PriorStore.open(path)
    assert repaired.verify() and repaired.checksums == ref_checksums
    assert store_files(path) == reference


def test_concurrent_runs_of_one_config_do_the_work_once(tmp_path, monkeypatch):
    """Issue 12 item 7: the second of two simultaneous runs waits for the store lock, then finds
    the store complete; every chunk is sampled exactly once."""
    import tasks.generate as generate_task

    config = small_config()
    monkeypatch.setattr(generate_flow, "emit_event", lambda **kw: None)
    # Prefect ships the chunk task (and the globals it uses) by value: a list would be copied,
    # so the calls are recorded in a file
    log_file = tmp_path / "sampled.log"
    real_sample = generate_task.sample_split_range

    def slow_sample(cfg, split, start, stop):
        with open(log_file, "a") as f:
            f.write(f"{split} {start}\n")
        time.sleep(0.3)  # widen the window in which two runs would both sample a chunk
        return real_sample(cfg, split, start, stop)

    monkeypatch.setattr(generate_task, "sample_split_range", slow_sample)
    paths, errors = [], []

    def run():
        try:
            paths.append(generate_flow.generate_prior(config, root=str(tmp_path), n_workers=2))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(paths) == 2 and paths[0] == paths[1]
    sampled = log_file.read_text().split("\n")[:-1]
    assert len(sampled) == 5 and len(set(sampled)) == 5  # each of the 5 chunks sampled once
    assert PriorStore.open(paths[0]).verify()


def test_make_task_runner(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    local = make_task_runner(3)
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_kwargs["processes"] is False
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.1.2.3:8786")
    assert make_task_runner(3).address == "tcp://10.1.2.3:8786"
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    with pytest.raises(ValueError, match="n_workers"):
        make_task_runner(0)
