"""Zarr prior store: roundtrip, checksums, corruption, incomplete/mismatch refusal, resume."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline_lib.priors import PriorConfig, sample_split_range
from storage.prior_store import (
    IncompleteStoreError,
    PriorStore,
    PriorStoreError,
    StoreConfigMismatchError,
    prior_layout,
    store_path,
)


def tiny_config(name: str = "tiny", seed: int = 0, **over) -> PriorConfig:
    data = dict(
        name=name,
        seed=seed,
        graph={"kind": "erdos_renyi", "n_nodes_min": 3, "n_nodes_max": 5, "expected_parents": 1.0},
        mechanism={"kind": "nn", "hidden": 8},
        interventions={"n_regimes": 2, "perturbation_dim": 3},
        n_obs=16,
        n_int=8,
        splits={"train": 10, "val": 4, "test": 3},
        chunk_tasks=4,
        counterfactuals=True,
    )
    data.update(over)
    return PriorConfig.from_dict(data)


def fill(store: PriorStore, config: PriorConfig, only=None) -> list:
    """Write the pending chunks (or the listed (split, chunk) pairs) from the real sampler."""
    written = []
    for split, c, start, stop in store.pending_chunks():
        if only is not None and (split, c) not in only:
            continue
        assert store.write_chunk(split, c, sample_split_range(config, split, start, stop))
        written.append((split, c))
    return written


def all_bytes(path: Path) -> dict[str, bytes]:
    g = zarr.open_group(str(path), mode="r")
    return {
        f"{s}/{name}": np.ascontiguousarray(g[s][name][:]).tobytes()
        for s in ("train", "val", "test")
        for name in g[s].array_keys()
    }


@pytest.fixture
def config() -> PriorConfig:
    return tiny_config()


@pytest.fixture
def complete_store(tmp_path, config) -> PriorStore:
    store = PriorStore.create_or_open(tmp_path, config)
    fill(store, config)
    store.finalize()
    return store


def test_path_layout_and_attributes(tmp_path, config):
    store = PriorStore.create_or_open(tmp_path, config)
    assert store.path == tmp_path / "priors" / f"tiny-{config.content_hash()[:12]}.zarr"
    assert store_path(tmp_path, config) == store.path
    assert store.hash == config.content_hash()
    assert store.config == config
    assert not store.is_complete
    # 10 train tasks in chunks of 4 -> 3 chunks, the last one short
    assert [p for p in store.pending_chunks() if p[0] == "train"] == [
        ("train", 0, 0, 4), ("train", 1, 4, 8), ("train", 2, 8, 10)
    ]
    assert len(store.pending_chunks()) == 3 + 1 + 1
    g = zarr.open_group(str(store.path), mode="r")
    assert g["train/x_int"].shape == (10, 2, 8, 5) and g["train/x_int"].chunks[0] == 4
    assert g["val/perturbation"].shape == (4, 2, 3)
    assert g["test/adjacency"].dtype == np.uint8 and g["test/node_mask"].dtype == np.bool_
    assert set(store.array_names("train")) == set(prior_layout(config))


def test_roundtrip_equals_sampler(complete_store, config):
    for split in ("train", "val", "test"):
        want = sample_split_range(config, split, 0, config.n_tasks(split))
        got = complete_store.read(split)
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{split}/{k}")
            assert got[k].dtype == want[k].dtype
    part = complete_store.read("train", 3, 7, as_torch=True)
    import torch

    assert isinstance(part["x_obs"], torch.Tensor) and part["x_obs"].shape == (4, 16, 5)
    np.testing.assert_array_equal(part["adjacency"].numpy(), sample_split_range(config, "train", 3, 7)["adjacency"])


def test_finalize_checksums_and_verify(complete_store, config):
    store = PriorStore.open(complete_store.path)
    assert store.is_complete and store.verify()
    checksums = store.checksums
    assert len(checksums) == 3 * len(prior_layout(config))
    assert all(len(v) == 64 for v in checksums.values())
    # the checksums are the last attribute written, after the bookkeeping
    assert list(store.attrs)[-1] == "checksums"
    assert store.attrs["completed_chunks"] == {"train": 3, "val": 1, "test": 1}
    # reproducible: recomputing gives the stored values
    assert store.compute_checksums() == checksums


def test_verify_detects_corrupted_chunk(complete_store, caplog):
    g = zarr.open_group(str(complete_store.path), mode="r+")
    block = g["train/x_obs"][4:8]
    block[1, 2, 0] += 1.0  # one value in the middle chunk
    g["train/x_obs"][4:8] = block
    store = PriorStore.open(complete_store.path)
    assert store.verify() is False
    assert "train/x_obs" in caplog.text
    with pytest.raises(PriorStoreError, match="train/x_obs"):
        store.verify(raise_error=True)


def test_verify_detects_garbled_chunk_file(complete_store):
    chunk_file = complete_store.path / "val" / "x_int" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(chunk_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk_file.write_bytes(bytes(raw))
    assert PriorStore.open(complete_store.path).verify() is False


def test_incomplete_store_refused(tmp_path, config):
    store = PriorStore.create_or_open(tmp_path, config)
    fill(store, config, only={("train", 0)})
    with pytest.raises(IncompleteStoreError, match="checksums.*4 pending"):
        PriorStore.open(store.path)
    with pytest.raises(IncompleteStoreError, match=r"train\[1\]"):
        store.finalize()
    # all chunks written but not finalized: still incomplete for readers
    fill(store, config)
    with pytest.raises(IncompleteStoreError, match="checksums"):
        PriorStore.open(store.path)
    store.finalize()
    assert PriorStore.open(store.path).is_complete
    with pytest.raises(FileNotFoundError):
        PriorStore.open(tmp_path / "nope.zarr")


def test_mismatching_config_refused_and_store_untouched(complete_store, config, tmp_path):
    other = tiny_config(seed=1)
    assert other.content_hash() != config.content_hash()
    before = all_bytes(complete_store.path)
    attrs_before = complete_store.attrs
    with pytest.raises(StoreConfigMismatchError, match="hash"):
        PriorStore.open(complete_store.path, other)
    # a store whose directory name collides with another config's: create_or_open refuses
    os.makedirs(store_path(tmp_path, other).parent, exist_ok=True)
    os.rename(complete_store.path, store_path(tmp_path, other))
    with pytest.raises(StoreConfigMismatchError, match="refusing"):
        PriorStore.create_or_open(tmp_path, other)
    moved = PriorStore.open(store_path(tmp_path, other))
    assert all_bytes(moved.path) == before and moved.attrs == attrs_before and moved.verify()


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"interventions": {"n_regimes": 0}},
        {"interventions": {"n_regimes": 3, "kind": "soft"}, "counterfactuals": True, "mechanism": {"kind": "linear"}},
    ],
)
def test_layout_matches_sampler(over):
    config = tiny_config(**over)
    arrays = sample_split_range(config, "val", 0, 2)
    layout = prior_layout(config)
    assert set(layout) == set(arrays)
    for name, spec in layout.items():
        assert arrays[name].shape == (2, *spec.tail) and arrays[name].dtype == spec.dtype, name


def test_write_chunk_validates_input(tmp_path, config):
    store = PriorStore.create_or_open(tmp_path, config)
    arrays = sample_split_range(config, "train", 0, 4)
    with pytest.raises(PriorStoreError, match="missing arrays.*x_obs"):
        store.write_chunk("train", 0, {k: v for k, v in arrays.items() if k != "x_obs"})
    with pytest.raises(PriorStoreError, match="train/x_obs: dtype float64"):
        store.write_chunk("train", 0, {**arrays, "x_obs": arrays["x_obs"].astype(np.float64)})
    with pytest.raises(PriorStoreError, match=r"train/adjacency: shape \(3, 5, 5\)"):
        store.write_chunk("train", 0, {**arrays, "adjacency": arrays["adjacency"][:3]})
    with pytest.raises(PriorStoreError, match="chunk_index 3 out of range"):
        store.write_chunk("train", 3, arrays)
    with pytest.raises(PriorStoreError, match="split must be one of"):
        store.write_chunk("dev", 0, arrays)
    # nothing was marked done by the failed calls
    assert len(store.pending_chunks()) == 5


def test_resume_is_byte_identical_and_never_rewrites(tmp_path, config, monkeypatch):
    reference = PriorStore.create_or_open(tmp_path / "a", config)
    fill(reference, config)
    reference.finalize()

    store = PriorStore.create_or_open(tmp_path / "b", config)
    first = fill(store, config, only={("train", 0), ("train", 2), ("test", 0)})
    # a crash half-way through chunk ("val", 0): data of one array written, no marker
    half = sample_split_range(config, "val", 0, 4)
    zarr.open_group(str(store.path), mode="r+")["val/x_obs"][0:4] = half["x_obs"] + 7.0
    del store  # "crash"

    done_file = tmp_path / "b" / "priors" / reference.path.name / "train" / "x_obs" / "c" / "0" / "0" / "0"
    mtime = done_file.stat().st_mtime_ns
    resumed = PriorStore.create_or_open(tmp_path / "b", config)
    assert [(s, c) for s, c, _, _ in resumed.pending_chunks()] == [("train", 1), ("val", 0)]
    # completed chunks are skipped by write_chunk itself, even if asked
    assert resumed.write_chunk("train", 0, sample_split_range(config, "train", 0, 4)) is False
    assert done_file.stat().st_mtime_ns == mtime
    calls = []
    real = PriorStore.write_chunk
    monkeypatch.setattr(PriorStore, "write_chunk", lambda self, s, c, a: calls.append((s, c)) or real(self, s, c, a))
    fill(resumed, config)
    assert sorted(calls) == [("train", 1), ("val", 0)] and set(first).isdisjoint(calls)
    assert resumed.finalize() == reference.checksums
    assert all_bytes(resumed.path) == all_bytes(reference.path)


def test_create_or_open_is_idempotent(tmp_path, config):
    a = PriorStore.create_or_open(tmp_path, config)
    fill(a, config, only={("train", 1)})
    b = PriorStore.create_or_open(tmp_path, config)
    assert b.attrs["created_at"] == a.attrs["created_at"]
    assert ("train", 1, 4, 8) not in b.pending_chunks() and len(b.pending_chunks()) == 4


def test_empty_split_and_no_regimes(tmp_path):
    config = tiny_config(
        name="noint", interventions={"n_regimes": 0}, splits={"train": 5, "val": 0, "test": 2}, chunk_tasks=8
    )
    store = PriorStore.create_or_open(tmp_path, config)
    assert [(s, c) for s, c, _, _ in store.pending_chunks()] == [("train", 0), ("test", 0)]
    assert "perturbation" not in store.array_names("train")
    fill(store, config)
    store.finalize()
    opened = PriorStore.open(store.path, config)
    assert opened.n_tasks("val") == 0 and opened.read("val")["x_int"].shape == (0, 0, 8, 5)
    assert opened.read("train")["x_int"].shape == (5, 0, 8, 5)
    assert opened.verify()


def test_task_dataset_reads_tasks_and_caches_chunks(complete_store, config, monkeypatch):
    import pickle

    import torch

    from storage.datasets import ChunkShuffleSampler, PriorTaskDataset

    ds = PriorTaskDataset(complete_store.path, "train", cache_chunks=1)
    want = sample_split_range(config, "train", 0, 10)
    assert len(ds) == 10
    item = ds[9]
    assert set(item) == set(want) and all(isinstance(v, torch.Tensor) for v in item.values())
    for k in want:
        np.testing.assert_array_equal(item[k].numpy(), want[k][9])
    np.testing.assert_array_equal(ds[-1]["x_obs"].numpy(), want["x_obs"][9])
    with pytest.raises(IndexError, match="out of range"):
        ds[10]

    reads = []
    real_read = PriorStore.read
    monkeypatch.setattr(PriorStore, "read", lambda self, *a, **kw: reads.append(a) or real_read(self, *a, **kw))
    fresh = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker gets: no handle
    sampler = ChunkShuffleSampler(fresh, seed=5)
    order = list(sampler)
    assert sorted(order) == list(range(10)) and order != list(range(10))
    # chunk-contiguous: the chunk id changes exactly n_chunks - 1 times
    assert sum(a // 4 != b // 4 for a, b in zip(order, order[1:])) == 2
    for i in order:
        np.testing.assert_array_equal(fresh[i]["adjacency"].numpy(), want["adjacency"][i])
    assert len(reads) == 3  # one decode per chunk per epoch
    sampler.set_epoch(1)
    assert list(sampler) != order and list(ChunkShuffleSampler(fresh, seed=5)) == order


def test_prior_stream_is_seeded(config):
    from torch.utils.data import DataLoader

    from storage.datasets import PriorStream

    a = list(PriorStream(config, batch_size=3, seed=11, n_batches=2))
    b = list(PriorStream(config, batch_size=3, seed=11, n_batches=2))
    c = list(PriorStream(config, batch_size=3, seed=12, n_batches=1))
    assert len(a) == 2 and a[0]["x_obs"].shape == (3, 16, 5) and a[0]["x_int"].shape == (3, 2, 8, 5)
    for x, y in zip(a, b):
        assert all(torch_equal(x[k], y[k]) for k in x)
    assert not torch_equal(a[0]["x_obs"], a[1]["x_obs"]) and not torch_equal(a[0]["x_obs"], c[0]["x_obs"])
    loaded = list(DataLoader(PriorStream(config, batch_size=3, seed=11, n_batches=2), batch_size=None))
    assert all(torch_equal(x[k], y[k]) for x, y in zip(a, loaded) for k in x)
    with pytest.raises(ValueError, match="batch_size"):
        PriorStream(config, batch_size=0)


def torch_equal(x, y) -> bool:
    """Exact equality, NaN == NaN (int_values are NaN where not intervened)."""
    x, y = x.numpy(), y.numpy()
    return x.shape == y.shape and bool(np.array_equal(x, y, equal_nan=x.dtype.kind == "f"))


def test_legacy_store_without_digests_stays_readable_and_gets_digests_on_resume(complete_store, config):
    """Stores written before per-chunk digests: read after a whole-array check, upgraded by a resume."""
    import shutil

    from storage.prior_store import StoreCorruptedError

    for split in ("train", "val", "test"):
        shutil.rmtree(complete_store.path / split / "chunk_sha256")
    want = sample_split_range(config, "train", 0, 10)
    legacy = PriorStore.open(complete_store.path)
    assert not legacy.has_chunk_digests("train") and legacy.verify()
    assert all(np.array_equal(legacy.read("train")[k], want[k], equal_nan=True) for k in want)
    # a legacy store is still refused when its bytes differ from the finalized checksums
    g = zarr.open_group(str(complete_store.path), mode="r+")
    g["val/x_obs"][0:1] = g["val/x_obs"][0:1] + 1.0
    with pytest.raises(StoreCorruptedError, match="val/x_obs"):
        PriorStore.open(complete_store.path).read("val")

    resumed = PriorStore.create_or_open(complete_store.path.parents[1], config)
    damaged = resumed.damaged_chunks()
    assert len(damaged) == 5 and all("no digests recorded" in why for _, _, why in damaged)
    resumed.invalidate([(s, c) for s, c, _ in damaged])
    fill(resumed, config)
    resumed.finalize()
    upgraded = PriorStore.open(complete_store.path)
    assert upgraded.has_chunk_digests("val") and upgraded.verify()
    np.testing.assert_array_equal(upgraded.read("val")["x_obs"], sample_split_range(config, "val", 0, 4)["x_obs"])
