"""Zarr 3 store of a sampled prior: one store per `PriorConfig`, written chunk by chunk.

Layout (the data contract of DESIGN.md)::

    <root>/priors/<name>-<hash[:12]>.zarr/
        zarr.json                  root attributes (see below)
        train/ val/ test/          one group per split, T_s = config.splits.<split> tasks
            adjacency   (T, d, d)        uint8    A[i, j] = 1 iff edge i -> j
            node_mask   (T, d)           bool
            x_obs       (T, n_obs, d)    float32
            noise_obs   (T, n_obs, d)    float32
            int_targets (T, K, d)        bool
            int_values  (T, K, d)        float32  (NaN for soft interventions)
            x_int       (T, K, n_int, d) float32
            perturbation (T, K, p)       float32  (only when p > 0)
            x_cf        (T, K, n_obs, d) float32  (only with config.counterfactuals)
            obs_mean    (T, d)           float32
            obs_std     (T, d)           float32
            chunk_done  (n_chunks,)      uint8    completion markers, chunk size 1

Every data array is chunked along the task axis only, with `config.chunk_tasks` tasks per
chunk, so chunk c of a split covers the task range ``[c * C, min((c + 1) * C, T))`` and is
exactly one Zarr chunk of every array. Writers of different chunks therefore touch
disjoint keys, which makes concurrent writes from Dask workers (threads or processes) safe.

Completion bookkeeping. A finished chunk writes its data, then its digests, then sets its
own element of `chunk_done`; `chunk_done` has chunk size 1, so each marker is its own key and
no two writers ever read-modify-write the same object (a shared attribute list would lose
updates under concurrency). A writer that dies half-way leaves no marker and its chunk is
rewritten on resume; a chunk with a marker is never rewritten by `write_chunk`. Resume
(`damaged_chunks` + `invalidate`) re-checks every marked chunk against its digests, so a
marker never certifies a chunk that was lost or damaged after it was written.

Per-chunk digests. ``<split>/chunk_sha256`` (n_chunks, n_arrays, 32) uint8, chunk (1, ...),
holds for every chunk c and data array a (in the order of its ``arrays`` attribute)

    sha256( "<split>/<a>[<c>]|<t.str>|<shape>|" ‖ bytes(a[start:stop]) )

of the chunk's decoded values, written by the chunk's own writer after its data and before
its marker. Every `read` re-checks the chunks it touches: marker set, digest present, chunk
file present (Zarr would silently return the fill value for a missing one; data arrays are
written with ``write_empty_chunks`` so every chunk has a file), decodable, digest equal.
Anything else raises :class:`StoreCorruptedError` naming split, array, chunk and task range;
no value of a damaged chunk is ever returned. Stores written before digests existed
("legacy", no ``chunk_sha256``) are checked against the whole-array checksums on the first
read of each split instead, and get digests on the next `generate` (their chunks are
regenerated, byte-identical).

Root attributes: ``config`` (the PriorConfig as JSON), ``hash`` (full sha256 content hash),
``generator_version``, ``created_at``, and, written by :meth:`PriorStore.finalize` only,
``completed_chunks`` ({split: n_chunks}), ``finalized_at`` and, last of all, ``checksums``
({"<split>/<array>": sha256 hex}). A store without ``checksums`` is incomplete: it is
resumed by generation and refused by readers.

Checksum definition: for an array ``a`` of shape ``(T, ...)`` and dtype ``t``,

    sha256( "<t.str>|<shape>|" ‖ bytes(a[0:C]) ‖ bytes(a[C:2C]) ‖ ... )

where ``bytes`` is the C-order little/native-endian buffer of the *decoded* values. Hashing
decoded values (rather than compressed chunk files) keeps checksums independent of the
Blosc build while any change of a stored value, or an undecodable chunk, is detected.
:attr:`PriorStore.content_digest` (sha256 over the sorted checksums) names the bytes of a
whole store; the result cache is keyed by it (storage.results).

Concurrency between runs: :func:`store_lock` is an exclusive ``fcntl.flock`` on
``<store>.zarr.lock`` beside the store; the generate flow holds it for a whole run, so a second
run of the same config waits and then finds the store complete (local filesystems only).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np
import zarr
import zarr.codecs
from zarr.core.sync import sync as _zarr_sync

if TYPE_CHECKING:  # storage -> pipeline_lib for types only; imported lazily at runtime
    from pipeline_lib.priors import PriorConfig

__all__ = [
    "SPLITS",
    "ArraySpec",
    "PriorStore",
    "PriorStoreError",
    "IncompleteStoreError",
    "StoreConfigMismatchError",
    "StoreCorruptedError",
    "prior_layout",
    "store_lock",
    "store_path",
]

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
_DONE = "chunk_done"
_DIGEST = "chunk_sha256"
_BOOKKEEPING = frozenset({_DONE, _DIGEST})
_SCAN_CHUNKS = 16  # chunks verified per step of a full scan (verify, finalize, checksums)
# zstd + bitshuffle at a moderate level: float32 samples barely compress, so higher levels
# cost writer time for a few percent of disk.
_COMPRESSOR = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
# Zarr 3 skips writing chunks equal to the fill value by default; then a deleted chunk file
# and an all-zero chunk look the same. Writing every chunk makes "file missing" an error.
_WRITE_ALL_CHUNKS = {"write_empty_chunks": True}


class PriorStoreError(ValueError):
    """Base class of the store's errors."""


class IncompleteStoreError(PriorStoreError):
    """The store exists but is not finalized (pending chunks or checksums absent)."""


class StoreConfigMismatchError(PriorStoreError):
    """The store was written for a different PriorConfig (content hashes differ)."""


class StoreCorruptedError(PriorStoreError):
    """Stored bytes fail their checks: a chunk is missing, undecodable or differs from its digest."""


@dataclass(frozen=True)
class ArraySpec:
    """Per-task shape (without the leading task axis) and dtype of one stored array."""

    tail: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "tail", tuple(int(s) for s in self.tail))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))


def store_path(root: str | Path, config: "PriorConfig") -> Path:
    """`<root>/priors/<name>-<hash[:12]>.zarr` for `config`.

    Raises :class:`PriorStoreError` when the name would place the store anywhere but directly
    in ``<root>/priors`` (``..``, ``/`` or an absolute name). The store's parent directory is
    resolved, not the store itself, so a store that is a symlink to another disk stays valid.
    """
    priors = Path(root) / "priors"
    path = priors / f"{config.name}-{config.content_hash()[:12]}.zarr"
    if path.parent.resolve() != priors.resolve() or path.name in ("", ".", ".."):
        raise PriorStoreError(
            f"config name {config.name!r}: its store {path} resolves to {path.parent.resolve() / path.name}, "
            f"outside {priors.resolve()}; a prior name must not contain '/' or '..'"
        )
    return path


@contextlib.contextmanager
def store_lock(path: str | Path, on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on the store at `path` (``<path>.lock``, fcntl.flock) while inside.

    Blocks until the lock is free; `on_wait` is called once, with what the lock file says about
    its holder, if another run holds it. The lock is released when the holder exits or dies
    (the kernel drops flock locks of closed descriptors), so a killed run never leaves a
    stale lock. The lock file is kept: deleting it would let two runs lock different inodes.
    """
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {datetime.now(timezone.utc).isoformat()}\n".encode(), 0)
        yield lock_path
    finally:
        os.close(fd)  # releases the flock


def prior_layout(config: "PriorConfig") -> dict[str, ArraySpec]:
    """The arrays (name -> per-task shape and dtype) a store of `config` holds.

    Shapes come from the config's padded sizes: ``d = d_max``, ``n_obs``, ``K`` regimes of
    ``n_int`` samples each, and ``p`` perturbation features (array omitted when ``p == 0``);
    ``x_cf`` (counterfactuals of x_obs under each regime) only if ``config.counterfactuals``.
    Must list exactly the keys `sample_split_range` returns (a test checks it).
    """
    d, n_obs, n_int = config.d_max, config.n_obs, config.n_int
    k, p = config.interventions.n_regimes, config.interventions.perturbation_dim
    layout = {
        "adjacency": ArraySpec((d, d), np.uint8),
        "node_mask": ArraySpec((d,), np.bool_),
        "x_obs": ArraySpec((n_obs, d), np.float32),
        "noise_obs": ArraySpec((n_obs, d), np.float32),
        "int_targets": ArraySpec((k, d), np.bool_),
        "int_values": ArraySpec((k, d), np.float32),
        "x_int": ArraySpec((k, n_int, d), np.float32),
        "obs_mean": ArraySpec((d,), np.float32),
        "obs_std": ArraySpec((d,), np.float32),
    }
    if p > 0:
        layout["perturbation"] = ArraySpec((k, p), np.float32)
    if config.counterfactuals:
        layout["x_cf"] = ArraySpec((k, n_obs, d), np.float32)
    return layout


def _chunk_bounds(n_tasks: int, chunk_tasks: int, chunk_index: int) -> tuple[int, int]:
    start = chunk_index * chunk_tasks
    return start, min(start + chunk_tasks, n_tasks)


def _chunk_digest(split: str, name: str, chunk_index: int, values: np.ndarray) -> bytes:
    """sha256 of one chunk's decoded values; split/array/chunk in the prefix, so a chunk file
    copied over another one (same shape, other place) does not match."""
    values = np.ascontiguousarray(values)
    h = hashlib.sha256(f"{split}/{name}[{chunk_index}]|{values.dtype.str}|{values.shape}|".encode())
    h.update(values.view(np.uint8).data if values.dtype == np.bool_ else values.data)
    return h.digest()


def _checksum_hasher(arr: zarr.Array) -> "hashlib._Hash":
    return hashlib.sha256(f"{arr.dtype.str}|{tuple(arr.shape)}|".encode())


def _array_checksum(arr: zarr.Array) -> str:
    """sha256 over dtype, shape and the decoded values, streamed one chunk at a time."""
    h = _checksum_hasher(arr)
    step = arr.chunks[0]
    for start in range(0, arr.shape[0], step):
        block = np.ascontiguousarray(arr[start : start + step])
        h.update(block.tobytes())
    return h.hexdigest()


def _blocks(arr: zarr.Array, ca: int, cb: int, step: int) -> tuple[np.ndarray | None, list[np.ndarray | Exception]]:
    """Values of chunks ``ca:cb`` of `arr` (`step` entries each along axis 0): the whole range,
    or None when it fails to decode, and each chunk's values or the exception reading it raised."""
    n = arr.shape[0]
    bounds = [(c * step, min((c + 1) * step, n)) for c in range(ca, cb)]
    try:
        whole = arr[ca * step : min(cb * step, n)]
    except Exception:  # read chunk by chunk to tell which one is bad
        parts: list[np.ndarray | Exception] = []
        for lo, hi in bounds:
            try:
                parts.append(arr[lo:hi])
            except Exception as exc:
                parts.append(exc)
        return None, parts
    return whole, [whole[lo - ca * step : hi - ca * step] for lo, hi in bounds]


def _chunk_file_exists(arr: zarr.Array, chunk_index: int) -> bool:
    """Whether the store holds the key of chunk `chunk_index` (along the task axis) of `arr`."""
    key = arr.metadata.encode_chunk_key((chunk_index,) + (0,) * (arr.ndim - 1))
    sp = arr.store_path
    return bool(_zarr_sync(sp.store.exists(f"{sp.path}/{key}" if sp.path else key)))


class PriorStore:
    """Read/write access to one prior's Zarr store.

    Create (or resume) with :meth:`create_or_open`, fill with :meth:`write_chunk` for every
    entry of :meth:`pending_chunks`, then :meth:`finalize`. Readers use :meth:`open`, which
    refuses stores that are not finalized; :meth:`read` verifies every chunk it returns.
    """

    def __init__(self, path: Path, group: zarr.Group, config: "PriorConfig | None" = None):
        self.path = Path(path)
        self._group = group
        self._attrs: dict[str, Any] = dict(group.attrs)
        self._config = config
        self._digest_order: dict[str, dict[str, int]] = {}
        self._legacy_checked: set[str] = set()
        # Opening a Zarr array reads its metadata file; shapes never change, so open each once.
        self._handles: dict[str, dict[str, zarr.Array]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def create_or_open(cls, root: str | Path, config: "PriorConfig") -> "PriorStore":
        """Open the store of `config` under `root`, creating groups and arrays if absent.

        Idempotent: a store whose creation was interrupted is completed, an existing store is
        opened as it is (a legacy store gains empty digest arrays: its chunks then count as
        damaged until regenerated). Raises :class:`StoreConfigMismatchError` *before writing
        anything* when the directory holds a store of another config.
        """
        path = store_path(root, config)
        full_hash = config.content_hash()
        if path.exists():
            existing = zarr.open_group(str(path), mode="r", zarr_format=3)
            stored = existing.attrs.get("hash")
            if stored is not None and stored != full_hash:
                raise StoreConfigMismatchError(
                    f"store {path} holds prior hash {stored}, config {config.name!r} has "
                    f"hash {full_hash}; refusing to touch it"
                )
        layout = prior_layout(config)
        group = zarr.open_group(str(path), mode="a", zarr_format=3)
        if "hash" not in group.attrs:
            from pipeline_lib.priors import GENERATOR_VERSION

            group.attrs.update(
                {
                    "config": _json_plain(config),
                    "hash": full_hash,
                    "generator_version": str(GENERATOR_VERSION),
                    "created_at": datetime.now(timezone.utc).isoformat(),
                    "chunk_tasks": int(config.chunk_tasks),
                }
            )
        for split in SPLITS:
            n_tasks = int(getattr(config.splits, split))
            n_chunks = math.ceil(n_tasks / config.chunk_tasks)
            sg = group.require_group(split)
            existing_arrays = set(sg.array_keys())
            for name, spec in layout.items():
                shape = (n_tasks, *spec.tail)
                if name in existing_arrays:
                    arr = sg[name]
                    if tuple(arr.shape) != shape or arr.dtype != spec.dtype:
                        raise StoreConfigMismatchError(
                            f"{path}/{split}/{name}: stored shape {arr.shape} {arr.dtype}, "
                            f"config expects {shape} {spec.dtype}"
                        )
                    continue
                sg.create_array(
                    name,
                    shape=shape,
                    # zero-length axes (K = 0 regimes) still get a chunk length of 1
                    chunks=(int(config.chunk_tasks), *(max(1, s) for s in spec.tail)),
                    dtype=spec.dtype,
                    compressors=_COMPRESSOR,
                    fill_value=np.zeros((), spec.dtype).item(),
                )
            if _DONE not in existing_arrays:
                sg.create_array(_DONE, shape=(n_chunks,), chunks=(1,), dtype=np.uint8, fill_value=0)
            if _DIGEST not in existing_arrays:
                names = sorted(layout)
                # all-zero row (the fill value) = "no digest": no sha256 output is all zeros in practice
                sg.create_array(
                    _DIGEST, shape=(n_chunks, len(names), 32), chunks=(1, len(names), 32),
                    dtype=np.uint8, fill_value=0, attributes={"arrays": names},
                )
        return cls(path, group, config)

    @classmethod
    def open(
        cls,
        path: str | Path,
        config: "PriorConfig | None" = None,
        *,
        allow_incomplete: bool = False,
    ) -> "PriorStore":
        """Open an existing store.

        Raises FileNotFoundError if `path` holds no store, :class:`StoreConfigMismatchError`
        if `config` is given and its hash differs from the stored one, and
        :class:`IncompleteStoreError` (naming what is missing) if the store is not finalized,
        unless `allow_incomplete` (for writers resuming a store).
        """
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise FileNotFoundError(f"no Zarr prior store at {path}")
        group = zarr.open_group(str(path), mode="r+" if allow_incomplete else "r", zarr_format=3)
        store = cls(path, group)
        if store._attrs.get("kind") == "imported":  # storage.importing: one task, no PriorConfig
            raise PriorStoreError(f"{path} is an imported data store, not a prior store; use it with "
                                  "`causalmeta predict --data` or `causalmeta evaluate --data`")
        if "hash" not in store._attrs or "config" not in store._attrs:
            raise IncompleteStoreError(f"{path}: root attributes 'hash'/'config' absent (creation interrupted)")
        if config is not None:
            if config.content_hash() != store.hash:
                raise StoreConfigMismatchError(
                    f"{path} holds prior hash {store.hash}, the given config has {config.content_hash()}"
                )
            store._config = config
        store._check_layout()
        if not allow_incomplete and not store.is_complete:
            pending = store.pending_chunks()
            what = (
                f"{len(pending)} pending chunk(s), first {pending[0][:2]}" if pending else "all chunks written"
            )
            raise IncompleteStoreError(
                f"{path}: attribute 'checksums' absent, the store is not finalized ({what}); "
                "re-run generation to resume it"
            )
        return store

    # ------------------------------------------------------------------ properties
    @property
    def hash(self) -> str:
        """Full sha256 content hash of the config this store was written for."""
        return self._attrs["hash"]

    @property
    def config(self) -> "PriorConfig":
        """The PriorConfig rebuilt from the stored attributes."""
        if self._config is None:
            from pipeline_lib.priors import PriorConfig

            self._config = PriorConfig.model_validate(self._attrs["config"])
        return self._config

    @property
    def attrs(self) -> dict[str, Any]:
        """A copy of the root attributes."""
        return dict(self._attrs)

    @property
    def is_complete(self) -> bool:
        """True once :meth:`finalize` wrote the checksums."""
        return "checksums" in self._attrs

    @property
    def checksums(self) -> dict[str, str]:
        if not self.is_complete:
            raise IncompleteStoreError(f"{self.path}: attribute 'checksums' absent")
        return dict(self._attrs["checksums"])

    @property
    def content_digest(self) -> str:
        """sha256 hex over the sorted per-array checksums: names the bytes of the whole store.

        Two finalized stores have the same digest iff every array has the same checksum;
        a store regenerated with other bytes gets another one.
        """
        blob = json.dumps(self.checksums, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def array_names(self, split: str) -> list[str]:
        """Data arrays of `split` (bookkeeping excluded), sorted."""
        return sorted(k for k in self._arrays(split) if k not in _BOOKKEEPING)

    def n_tasks(self, split: str) -> int:
        return int(self._arrays(split)["adjacency"].shape[0])

    def n_chunks(self, split: str) -> int:
        return int(self._arrays(split)[_DONE].shape[0])

    @property
    def chunk_tasks(self) -> int:
        return int(self._attrs["chunk_tasks"])

    def has_chunk_digests(self, split: str) -> bool:
        """False for legacy stores, written before per-chunk digests existed."""
        return _DIGEST in self._arrays(split)

    # ------------------------------------------------------------------ writing
    def chunk_range(self, split: str, chunk_index: int) -> tuple[int, int]:
        n_chunks = self.n_chunks(split)
        if not 0 <= chunk_index < n_chunks:
            raise PriorStoreError(f"chunk_index {chunk_index} out of range [0, {n_chunks}) for split {split!r}")
        return _chunk_bounds(self.n_tasks(split), self.chunk_tasks, chunk_index)

    def chunk_is_done(self, split: str, chunk_index: int) -> bool:
        self.chunk_range(split, chunk_index)
        return bool(self._markers(split, chunk_index)[0])

    def write_chunk(self, split: str, chunk_index: int, arrays: Mapping[str, np.ndarray]) -> bool:
        """Write the tasks of chunk `chunk_index` of `split`, its digests, then mark it done.

        `arrays` maps every stored array name to values of shape ``(stop - start, ...)`` with
        the stored dtype. Returns False (writing nothing) if the chunk is already marked done:
        completed chunks are never rewritten, so retried tasks are harmless.
        """
        start, stop = self.chunk_range(split, chunk_index)
        sg = self._arrays(split)
        if bool(self._markers(split, chunk_index)[0]):
            return False
        names = self.array_names(split)
        missing, extra = set(names) - set(arrays), set(arrays) - set(names)
        if missing or extra:
            raise PriorStoreError(
                f"write_chunk({split!r}, {chunk_index}): missing arrays {sorted(missing)}, "
                f"unexpected arrays {sorted(extra)}"
            )
        for name in names:
            arr, value = sg[name], np.asarray(arrays[name])
            expected = (stop - start, *arr.shape[1:])
            if value.shape != expected:
                raise PriorStoreError(f"{split}/{name}: shape {value.shape}, expected {expected} (tasks {start}:{stop})")
            if value.dtype != arr.dtype:
                raise PriorStoreError(f"{split}/{name}: dtype {value.dtype}, expected {arr.dtype}")
        order = self._order(split)
        digests = np.zeros((len(order), 32), np.uint8)
        for name in names:
            value = np.ascontiguousarray(arrays[name])
            sg[name].with_config(_WRITE_ALL_CHUNKS)[start:stop] = value
            if order:
                digests[order[name]] = np.frombuffer(_chunk_digest(split, name, chunk_index, value), np.uint8)
        if order:  # after the data: a digest never vouches for a chunk not yet written
            sg[_DIGEST][chunk_index] = digests
        # The marker goes last: a crash before this line leaves the chunk pending.
        sg[_DONE][chunk_index] = 1
        return True

    def pending_chunks(self) -> list[tuple[str, int, int, int]]:
        """(split, chunk_index, start, stop) of every chunk without a completion marker."""
        out = []
        for split in SPLITS:
            done = self._markers(split)
            n = self.n_tasks(split)
            for c in np.flatnonzero(done == 0).tolist():
                out.append((split, c, *_chunk_bounds(n, self.chunk_tasks, c)))
        return out

    def invalidate(self, chunks: list[tuple[str, int]]) -> None:
        """Mark chunks pending again, so generation rewrites them (byte-identical: seeded per task).

        A finalized store first loses its ``checksums``: from then on readers refuse it as
        incomplete until it is finalized again, and a crash half-way leaves it resumable.
        """
        if not chunks:
            return
        if self.is_complete:
            del self._group.attrs["checksums"]
            self._attrs = dict(self._group.attrs)
        for split, c in chunks:
            self.chunk_range(split, c)
            self._arrays(split)[_DONE][c] = 0

    def compute_checksums(self) -> dict[str, str]:
        """Fresh checksums ("<split>/<array>" -> sha256 hex) of every data array.

        Every chunk is verified on the way (see :meth:`read`); raises
        :class:`StoreCorruptedError` naming the chunks that fail.
        """
        checksums, problems = self._scan()
        if problems:
            raise StoreCorruptedError(f"{self.path}: " + "; ".join(problems))
        return checksums

    def finalize(self) -> dict[str, str]:
        """Check every chunk is done and intact, write the checksums as the very last attribute.

        Returns the checksums. Raises :class:`IncompleteStoreError` listing pending chunks and
        :class:`StoreCorruptedError` naming damaged ones: a marker alone never certifies a chunk.
        A store that is already complete is left untouched.
        """
        if self.is_complete:
            return self.checksums
        pending = self.pending_chunks()
        if pending:
            raise IncompleteStoreError(
                f"{self.path}: cannot finalize, {len(pending)} chunk(s) pending: "
                + ", ".join(f"{s}[{c}]" for s, c, _, _ in pending[:10])
            )
        checksums = self.compute_checksums()
        self._group.attrs.update(
            {
                "completed_chunks": {s: self.n_chunks(s) for s in SPLITS},
                "finalized_at": datetime.now(timezone.utc).isoformat(),
            }
        )
        # Separate, final update: its presence is what marks the store complete.
        self._group.attrs.update({"checksums": checksums})
        self._attrs = dict(self._group.attrs)
        return checksums

    def integrity_problems(self) -> list[str]:
        """Everything that fails: chunks (marker, file, decoding, digest), then array checksums.

        Each entry names split, array and chunk; an empty list means the store is intact.
        """
        checksums, bad = self._scan()
        if not bad and self.is_complete:
            stored = self.checksums
            for key in sorted(set(stored) | set(checksums)):
                expected, actual = stored.get(key), checksums.get(key)
                if expected != actual:
                    bad.append(f"{key} (stored checksum {str(expected)[:12]}..., recomputed {str(actual)[:12]}...)")
        return bad

    def verify(self, *, raise_error: bool = False) -> bool:
        """Re-check every chunk (marker, file, decoding, digest) and every array checksum.

        Returns True if all pass. Otherwise logs what fails (split, array, chunk) and returns
        False, or raises :class:`StoreCorruptedError` if `raise_error`.
        """
        bad = self.integrity_problems()
        if bad:
            msg = f"{self.path}: integrity check failed: {'; '.join(bad)}"
            if raise_error:
                raise StoreCorruptedError(msg)
            log.error(msg)
            return False
        return True

    # ------------------------------------------------------------------ reading
    def read(self, split: str, start: int = 0, stop: int | None = None, as_torch: bool = False) -> dict:
        """Arrays of tasks ``start:stop`` of `split` (numpy, or torch tensors if `as_torch`).

        Every chunk touched is read whole and checked against its digest before any of its
        values is returned; a missing, undecodable or altered chunk (or one not marked done)
        raises :class:`StoreCorruptedError` naming split, array, chunk and task range.
        """
        n = self.n_tasks(split)
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise PriorStoreError(f"read({split!r}, {start}, {stop}): range outside [0, {n}]")
        sg = self._arrays(split)
        names = self.array_names(split)
        if not self.has_chunk_digests(split):
            self._check_legacy_split(split)
            out = {name: sg[name][start:stop] for name in names}
        else:
            arrays = {name: sg[name] for name in names}
            step = self.chunk_tasks
            ca, cb = start // step, max(-(-stop // step), start // step)
            values, problems = self._check_range(split, ca, cb, arrays, first_only=True)
            if problems:
                raise StoreCorruptedError(
                    f"{self.path}: {problems[0]}; no data returned. Re-run `causalmeta generate` on its "
                    "config to regenerate the damaged chunks"
                )
            lo = ca * step
            # copy a sub-range: a view would keep every decoded chunk alive
            out = {name: v[start - lo : stop - lo] if (start, stop) == (lo, lo + len(v))
                   else v[start - lo : stop - lo].copy() for name, v in values.items()}
        if as_torch:
            import torch

            out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
        return out

    # ------------------------------------------------------------------ checking
    def _check_layout(self) -> None:
        """Every split group and array of the config exists (digests aside: legacy stores lack them).

        A run killed inside `create_or_open` leaves groups or arrays missing: that store is
        incomplete (generation completes it). A finalized store missing one is damaged.
        """
        names = set(prior_layout(self.config)) | {_DONE}
        missing = []
        for split in SPLITS:
            try:
                present = set(self._arrays(split))
            except KeyError:
                missing.append(f"group {split!r}")
                continue
            missing += [f"{split}/{name}" for name in sorted(names - present)]
        if missing:
            if self.is_complete:
                raise StoreCorruptedError(f"{self.path}: finalized store lacks {', '.join(missing)}")
            raise IncompleteStoreError(
                f"{self.path}: creation interrupted, {', '.join(missing[:5])} missing; re-run generation to resume it"
            )

    def _order(self, split: str) -> dict[str, int]:
        """Array name -> column of the digest array (empty for a legacy split)."""
        if split not in self._digest_order:
            sg = self._arrays(split)
            names = sg[_DIGEST].attrs["arrays"] if _DIGEST in sg else []
            self._digest_order[split] = {name: i for i, name in enumerate(names)}
        return self._digest_order[split]

    def _where(self, split: str, name: str, c: int) -> str:
        c0, c1 = _chunk_bounds(self.n_tasks(split), self.chunk_tasks, c)
        return f"{split}/{name} chunk {c} (tasks {c0}:{c1})"

    def _check_range(
        self, split: str, ca: int, cb: int, arrays: Mapping[str, zarr.Array], *, first_only: bool = False
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """Verify chunks ``ca:cb`` of `split`; return their decoded values and the problems found.

        The values (keyed by array, tasks of chunk ca up to the end of chunk cb - 1) are only
        meaningful when no problem is found. One Zarr read per array covers the whole range
        (Zarr decodes its chunks concurrently); only a range that fails to decode is read again
        chunk by chunk, to name the bad chunk.
        """
        sg = self._arrays(split)
        order = self._order(split)
        if not order:
            return {}, [f"{split} chunks {ca}:{cb}: no per-chunk digests (store written before them)"]
        step = self.chunk_tasks
        problems: list[str] = []
        done = _blocks(sg[_DONE], ca, cb, 1)[1]
        digests = _blocks(sg[_DIGEST], ca, cb, 1)[1]
        bad_chunks: set[int] = set()
        for i, c in enumerate(range(ca, cb)):
            what = None
            if isinstance(done[i], Exception):  # a garbled bookkeeping chunk fails to decode
                what = (_DONE, f"unreadable ({type(done[i]).__name__}: {done[i]})")
            elif int(done[i][0]) != 1:
                what = (_DONE, "not marked done (never written, interrupted or marker lost)" if int(done[i][0]) == 0
                        else f"marker garbled (value {int(done[i][0])})")
            elif isinstance(digests[i], Exception):
                what = (_DIGEST, f"unreadable ({type(digests[i]).__name__}: {digests[i]})")
            elif not digests[i].any():
                what = (_DIGEST, "no digests recorded (file lost, or chunk written before digests existed)")
            if what is not None:
                problems.append(f"{self._where(split, what[0], c)}: {what[1]}")
                bad_chunks.add(c)
                if first_only:
                    return {}, problems
        values: dict[str, np.ndarray] = {}
        for name, arr in arrays.items():
            whole, parts = _blocks(arr, ca, cb, step)
            if whole is not None:
                values[name] = whole
            for i, c in enumerate(range(ca, cb)):
                if c in bad_chunks:
                    continue
                block, problem = parts[i], None
                expected = digests[i][0, order[name]].tobytes() if name in order else bytes(32)
                if isinstance(block, Exception):  # truncated / garbled chunk file
                    problem = f"undecodable ({type(block).__name__}: {block})"
                elif expected == bytes(32):
                    problem = "no digest recorded"
                else:
                    actual = _chunk_digest(split, name, c, block)
                    # Zarr reads a missing chunk file as fill values (zeros): look for the file
                    # when the values differ or are all zero; a true all-zero chunk has its file.
                    if (actual != expected or not block.any()) and arr.size and not _chunk_file_exists(arr, c):
                        problem = "chunk file missing (Zarr would return fill values)"
                    elif actual != expected:
                        problem = f"digest mismatch (stored {expected.hex()[:12]}..., read {actual.hex()[:12]}...)"
                if problem is not None:
                    problems.append(f"{self._where(split, name, c)}: {problem}")
                    bad_chunks.add(c)
                    if first_only:
                        return {}, problems
            if whole is None and not problems:
                values[name] = np.concatenate(parts[: cb - ca]) if cb > ca else arr[0:0]
        return values, problems

    def damaged_chunks(self) -> list[tuple[str, int, str]]:
        """(split, chunk_index, what is wrong) of every chunk marked done that fails its checks.

        Reads every marked chunk once (decode + sha256). A chunk of a legacy split (no digest
        recorded) counts as damaged: regenerating it is the way it gets its digests.
        """
        out = []
        for split in SPLITS:
            done = self._markers(split)
            arrays = {name: self._arrays(split)[name] for name in self.array_names(split)}
            for c in np.flatnonzero(done != 0).tolist():
                problems = self._check_range(split, c, c + 1, arrays)[1]
                if problems:
                    out.append((split, c, "; ".join(problems)))
        return out

    def _scan(self) -> tuple[dict[str, str], list[str]]:
        """Checksums of all data arrays, computed from verified chunks, and every problem found."""
        checksums: dict[str, str] = {}
        problems: list[str] = []
        for split in SPLITS:
            sg = self._arrays(split)
            arrays = {name: sg[name] for name in self.array_names(split)}
            if not self.has_chunk_digests(split):  # legacy: whole-array checksums only
                for name, arr in arrays.items():
                    try:
                        checksums[f"{split}/{name}"] = _array_checksum(arr)
                    except Exception as exc:
                        problems.append(f"{split}/{name} (unreadable: {exc})")
                continue
            hashers = {name: _checksum_hasher(arr) for name, arr in arrays.items()}
            found_before = len(problems)
            n_chunks = self.n_chunks(split)
            for ca in range(0, n_chunks, _SCAN_CHUNKS):  # bounded memory on big stores
                values, found = self._check_range(split, ca, min(ca + _SCAN_CHUNKS, n_chunks), arrays)
                problems.extend(found)
                if len(problems) == found_before:
                    for name, block in values.items():
                        hashers[name].update(np.ascontiguousarray(block).data)
            if len(problems) == found_before:
                checksums.update({f"{split}/{name}": h.hexdigest() for name, h in hashers.items()})
        return checksums, problems

    def _check_legacy_split(self, split: str) -> None:
        """A split without digests is verified whole, once per handle, before its first read."""
        if split in self._legacy_checked:
            return
        log.warning("%s: split %r has no per-chunk digests; verifying its array checksums before reading "
                    "(re-run generate to add digests)", self.path, split)
        stored = self.checksums
        bad = []
        for name in self.array_names(split):
            key = f"{split}/{name}"
            try:
                actual = _array_checksum(self._arrays(split)[name])
            except Exception as exc:
                bad.append(f"{key} (unreadable: {exc})")
                continue
            if actual != stored.get(key):
                bad.append(f"{key} (checksum differs from the stored one)")
        if bad:
            raise StoreCorruptedError(f"{self.path}: {', '.join(bad)}; no data returned")
        self._legacy_checked.add(split)

    # ------------------------------------------------------------------ helpers
    def _split(self, split: str) -> zarr.Group:
        if split not in SPLITS:
            raise PriorStoreError(f"split must be one of {SPLITS}, got {split!r}")
        return self._group[split]

    def _markers(self, split: str, chunk_index: int | None = None) -> np.ndarray:
        """Completion markers of all chunks of `split` (or of one); an unreadable marker reads 0.

        A garbled marker file must not stop generation: its chunk is simply pending again,
        and rewriting it replaces the file (chunk size 1: no read-modify-write).
        """
        done = self._arrays(split)[_DONE]
        index = range(done.shape[0]) if chunk_index is None else [chunk_index]
        try:
            return done[:] if chunk_index is None else done[chunk_index : chunk_index + 1]
        except Exception:
            out = np.zeros(len(index), np.uint8)
            for i, c in enumerate(index):
                try:
                    out[i] = done[c]
                except Exception as exc:
                    log.warning("%s: %s/%s[%d] unreadable (%s); chunk counts as pending", self.path, split, _DONE, c, exc)
            return out

    def _arrays(self, split: str) -> dict[str, zarr.Array]:
        """All arrays of `split` (data and bookkeeping) by name, opened once per handle."""
        if split not in self._handles:
            self._handles[split] = dict(self._split(split).arrays())
        return self._handles[split]

    def __repr__(self) -> str:
        state = "complete" if self.is_complete else "incomplete"
        return f"PriorStore({str(self.path)!r}, hash={self.hash[:12]}, {state})"


def _json_plain(config: "PriorConfig") -> Any:
    """The config as plain JSON types (Zarr attributes reject numpy scalars)."""
    return json.loads(config.to_json())
