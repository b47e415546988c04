"""Issue 12, data integrity: verified reads (4), repair on resume (5), results keyed by bytes (6),
one generate run per store (7), store paths contained in the root (2).

Storage-level tests, no Prefect server; the flow-level checks of items 5 and 7 (a re-run of
`generate_prior` repairs a damaged store, two concurrent runs sample each chunk once) live in
tests/test_generate_flow.py, which already starts the Prefect test harness.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline_lib.priors import PriorConfig, sample_split_range
from storage.prior_store import PriorStore, PriorStoreError, StoreCorruptedError, store_path
from storage.results import ResultStore


def hardening_config(name: str = "hard") -> PriorConfig:
    return PriorConfig.from_dict(
        dict(
            name=name,
            seed=7,
            graph={"kind": "erdos_renyi", "n_nodes": 4, "expected_parents": 1.0},
            mechanism={"kind": "linear"},
            interventions={"n_regimes": 2},
            n_obs=12,
            n_int=6,
            splits={"train": 16, "val": 4, "test": 4},
            chunk_tasks=4,
        )
    )


def build(root: Path, config: PriorConfig) -> PriorStore:
    store = PriorStore.create_or_open(root, config)
    for split, c, start, stop in store.pending_chunks():
        store.write_chunk(split, c, sample_split_range(config, split, start, stop))
    store.finalize()
    return store


def chunk_file(path: Path, split: str, name: str, c: int) -> Path:
    arr = zarr.open_array(str(path / split / name), mode="r")
    return path / split / name / arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))


def flip_bytes(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    raw[-1] ^= 0x5A
    p.write_bytes(bytes(raw))


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of the store except the root zarr.json (it holds timestamps)."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p != path / "zarr.json"
    }


@pytest.fixture
def config() -> PriorConfig:
    return hardening_config()


@pytest.fixture
def store(tmp_path, config) -> PriorStore:
    return build(tmp_path, config)


# ----------------------------------------------------------------------------- item 4
@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: p.unlink(), "chunk file missing"),
        (flip_bytes, "undecodable|digest mismatch"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3]), "undecodable"),
    ],
    ids=["deleted", "flipped", "truncated"],
)
def test_read_verifies_chunks_and_never_returns_damaged_data(store, config, damage, reason):
    damage(chunk_file(store.path, "train", "x_obs", 1))
    reader = PriorStore.open(store.path)
    with pytest.raises(StoreCorruptedError, match=rf"train/x_obs chunk 1 \(tasks 4:8\): ({reason})"):
        reader.read("train")
    with pytest.raises(StoreCorruptedError, match="train/x_obs chunk 1"):
        reader.read("train", 5, 6)  # one task inside the damaged chunk
    from storage.datasets import PriorTaskDataset

    with pytest.raises(StoreCorruptedError, match="train/x_obs chunk 1"):
        PriorTaskDataset(store.path, "train")[5]  # what training reads goes through the same check
    # chunks that are intact still read, and read right
    want = sample_split_range(config, "train", 8, 16)
    got = reader.read("train", 8, 16)
    assert all(np.array_equal(got[k], want[k], equal_nan=True) for k in want)
    assert reader.verify() is False
    with pytest.raises(StoreCorruptedError, match="train/x_obs chunk 1"):
        reader.verify(raise_error=True)
    with pytest.raises(StoreCorruptedError, match="train/x_obs chunk 1"):
        reader.compute_checksums()


def test_missing_all_zero_chunk_is_an_error_not_its_fill_value(tmp_path):
    """An edgeless graph chunk is all zeros: Zarr would skip the file and read the fill value."""
    config = hardening_config("empty").model_copy(
        update={"graph": hardening_config().graph.model_copy(update={"expected_parents": 0.0})}
    )
    store = build(tmp_path, config)
    assert not store.read("test")["adjacency"].any()
    f = chunk_file(store.path, "test", "adjacency", 0)
    assert f.is_file()  # written although equal to the fill value
    f.unlink()
    with pytest.raises(StoreCorruptedError, match="test/adjacency chunk 0.*missing"):
        PriorStore.open(store.path).read("test")


# ----------------------------------------------------------------------------- item 5
def test_resume_rechecks_marked_chunks_and_repairs_them_byte_identically(tmp_path, config):
    # a marker alone never certifies a chunk: finalize refuses one lost after it was marked
    store = PriorStore.create_or_open(tmp_path, config)
    for split, c, start, stop in store.pending_chunks():
        store.write_chunk(split, c, sample_split_range(config, split, start, stop))
    chunk_file(store.path, "test", "noise_obs", 0).unlink()
    with pytest.raises(StoreCorruptedError, match="test/noise_obs chunk 0"):
        store.finalize()
    assert not PriorStore.open(store.path, allow_incomplete=True).is_complete

    reference = build(tmp_path / "ref", config)
    ref_files, ref_checksums = store_files(reference.path), reference.checksums
    # damage a finalized copy in every way: data deleted / truncated, bookkeeping garbled
    path = reference.path
    chunk_file(path, "train", "x_obs", 1).unlink()
    flip_bytes(chunk_file(path, "train", "chunk_done", 3))
    p = chunk_file(path, "val", "x_int", 0)
    p.write_bytes(p.read_bytes()[:10])
    flip_bytes(chunk_file(path, "test", "chunk_sha256", 0))

    resumed = PriorStore.create_or_open(tmp_path / "ref", config)
    damaged = resumed.damaged_chunks()
    assert [(s, c) for s, c, _ in damaged] == [("train", 1), ("val", 0), ("test", 0)]
    assert "train/x_obs chunk 1 (tasks 4:8): chunk file missing" in damaged[0][2]
    resumed.invalidate([(s, c) for s, c, _ in damaged])
    assert not resumed.is_complete and not PriorStore.open(path, allow_incomplete=True).is_complete
    pending = resumed.pending_chunks()
    # the garbled marker of train[3] makes it pending too; intact chunks are left alone
    assert [(s, c) for s, c, _, _ in pending] == [("train", 1), ("train", 3), ("val", 0), ("test", 0)]
    for split, c, start, stop in pending:
        assert resumed.write_chunk(split, c, sample_split_range(config, split, start, stop))
    assert resumed.finalize() == ref_checksums
    assert store_files(path) == ref_files and PriorStore.open(path).verify()


def test_run_killed_while_creating_the_store_leaves_it_incomplete_not_unreadable(tmp_path, config):
    """Found by benchmarks/fault_injection.py: a kill inside create_or_open left groups missing,
    and reading raised a bare KeyError."""
    import shutil

    from storage.prior_store import IncompleteStoreError

    path = PriorStore.create_or_open(tmp_path, config).path
    shutil.rmtree(path / "val")
    shutil.rmtree(path / "train" / "chunk_done")
    with pytest.raises(IncompleteStoreError, match="creation interrupted, train/chunk_done, group 'val' missing"):
        PriorStore.open(path)
    resumed = PriorStore.create_or_open(tmp_path, config)
    assert len(resumed.pending_chunks()) == 6
    # a finalized store that lost an array is damaged, not incomplete
    store = build(tmp_path / "done", config)
    shutil.rmtree(store.path / "test" / "x_int")
    with pytest.raises(StoreCorruptedError, match="lacks test/x_int"):
        PriorStore.open(store.path)


# ----------------------------------------------------------------------------- item 6
def test_results_are_keyed_by_store_content(tmp_path, config):
    store = build(tmp_path, config)
    results = ResultStore.for_store(tmp_path, store.path)
    results.save("exact-00000000", "test", 0, {"status": "ok", "metrics": {"nlpid": 29.0}})
    assert ResultStore.for_store(tmp_path, store.path).load("exact-00000000", "test", 0)["status"] == "ok"

    # the same store regenerated with other bytes (say, scored while a chunk was corrupt and
    # certified that way) must not inherit those results
    writer = PriorStore.open(store.path, allow_incomplete=True)
    writer.invalidate([("test", 0)])
    arrays = sample_split_range(config, "test", 0, 4)
    writer.write_chunk("test", 0, {**arrays, "x_obs": arrays["x_obs"] + 1.0})
    writer.finalize()
    other = ResultStore.for_store(tmp_path, store.path)
    assert other.dir != results.dir and other.load("exact-00000000", "test", 0) is None

    # a repair back to the original bytes finds the original results again
    writer = PriorStore.open(store.path, allow_incomplete=True)
    writer.invalidate([("test", 0)])
    writer.write_chunk("test", 0, arrays)
    writer.finalize()
    assert ResultStore.for_store(tmp_path, store.path).dir == results.dir
    with pytest.raises(FileNotFoundError):
        ResultStore.for_store(tmp_path, tmp_path / "priors" / "nope.zarr")


# ----------------------------------------------------------------------------- item 7
def test_store_lock_makes_a_second_holder_wait(tmp_path):
    from storage.prior_store import store_lock

    path = tmp_path / "priors" / "x-000000000000.zarr"
    order: list[str] = []
    waited: list[str] = []

    def second():
        with store_lock(path, on_wait=waited.append):
            order.append("second")

    with store_lock(path) as lock_file:
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        order.append("first done")
    t.join(10)
    assert order == ["first done", "second"]
    assert len(waited) == 1 and f"pid {os.getpid()}" in waited[0]
    assert lock_file == path.with_name(path.name + ".lock") and lock_file.is_file()


# ----------------------------------------------------------------------------- item 2
@pytest.mark.parametrize("name", ["../../x", "../x", "a/b", "/tmp/abs"])
def test_store_path_stays_under_root(tmp_path, config, name):
    # built without validation: the name check of PriorConfig is another layer's job
    bad = config.model_copy(update={"name": name})
    root = tmp_path / "root"
    with pytest.raises(PriorStoreError, match=rf"config name '{name}'.*outside .*priors"):
        store_path(root, bad)
    with pytest.raises(PriorStoreError, match="outside"):
        PriorStore.create_or_open(root, bad)
    assert not any(tmp_path.rglob("*.zarr")) and not Path("/tmp/abs-" + bad.content_hash()[:12] + ".zarr").exists()
    assert store_path(root, config) == root / "priors" / f"hard-{config.content_hash()[:12]}.zarr"
