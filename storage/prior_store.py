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

Completion bookkeeping. A finished chunk sets its own element of `chunk_done` *after* its
data; `chunk_done` has chunk size 1, so each marker is its own key and no two writers ever
read-modify-write the same object (a shared attribute list would lose updates under
concurrency). A writer that dies half-way leaves no marker and its chunk is rewritten on
resume; a chunk with a marker is never rewritten.

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
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import zarr
import zarr.codecs

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
    "store_path",
]

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
_DONE = "chunk_done"
# zstd + bitshuffle at a moderate level: float32 samples barely compress, so higher levels
# cost writer time for a few percent of disk.
_COMPRESSOR = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


class PriorStoreError(ValueError):
    """Base class of the store's errors."""


class IncompleteStoreError(PriorStoreError):
    """The store exists but is not finalized (pending chunks or checksums absent)."""


class StoreConfigMismatchError(PriorStoreError):
    """The store was written for a different PriorConfig (content hashes differ)."""


class StoreCorruptedError(PriorStoreError):
    """Recomputed checksums differ from the stored ones."""


@dataclass(frozen=True)
class ArraySpec:
    """Per-task shape (without the leading task axis) and dtype of one stored array."""

    tail: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "tail", tuple(int(s) for s in self.tail))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))


def store_path(root: str | Path, config: "PriorConfig") -> Path:
    """`<root>/priors/<name>-<hash[:12]>.zarr` for `config`."""
    return Path(root) / "priors" / f"{config.name}-{config.content_hash()[:12]}.zarr"


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


def _array_checksum(arr: zarr.Array) -> str:
    """sha256 over dtype, shape and the decoded values, streamed one chunk at a time."""
    h = hashlib.sha256(f"{arr.dtype.str}|{tuple(arr.shape)}|".encode())
    step = arr.chunks[0]
    for start in range(0, arr.shape[0], step):
        block = np.ascontiguousarray(arr[start : start + step])
        h.update(block.tobytes())
    return h.hexdigest()


class PriorStore:
    """Read/write access to one prior's Zarr store.

    Create (or resume) with :meth:`create_or_open`, fill with :meth:`write_chunk` for every
    entry of :meth:`pending_chunks`, then :meth:`finalize`. Readers use :meth:`open`, which
    refuses stores that are not finalized.
    """

    def __init__(self, path: Path, group: zarr.Group, config: "PriorConfig | None" = None):
        self.path = Path(path)
        self._group = group
        self._attrs: dict[str, Any] = dict(group.attrs)
        self._config = config

    # ------------------------------------------------------------------ construction
    @classmethod
    def create_or_open(cls, root: str | Path, config: "PriorConfig") -> "PriorStore":
        """Open the store of `config` under `root`, creating groups and arrays if absent.

        Idempotent: a store whose creation was interrupted is completed, an existing store is
        opened as it is. Raises :class:`StoreConfigMismatchError` *before writing anything*
        when the directory holds a store of another config.
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
                n_chunks = math.ceil(n_tasks / config.chunk_tasks)
                sg.create_array(_DONE, shape=(n_chunks,), chunks=(1,), dtype=np.uint8, fill_value=0)
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
        if "hash" not in store._attrs or "config" not in store._attrs:
            raise IncompleteStoreError(f"{path}: root attributes 'hash'/'config' absent (creation interrupted)")
        if config is not None:
            if config.content_hash() != store.hash:
                raise StoreConfigMismatchError(
                    f"{path} holds prior hash {store.hash}, the given config has {config.content_hash()}"
                )
            store._config = config
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

    def array_names(self, split: str) -> list[str]:
        """Data arrays of `split` (bookkeeping excluded), sorted."""
        return sorted(k for k in self._split(split).array_keys() if k != _DONE)

    def n_tasks(self, split: str) -> int:
        return int(self._split(split)["adjacency"].shape[0])

    def n_chunks(self, split: str) -> int:
        return int(self._split(split)[_DONE].shape[0])

    @property
    def chunk_tasks(self) -> int:
        return int(self._attrs["chunk_tasks"])

    # ------------------------------------------------------------------ writing
    def chunk_range(self, split: str, chunk_index: int) -> tuple[int, int]:
        n_chunks = self.n_chunks(split)
        if not 0 <= chunk_index < n_chunks:
            raise PriorStoreError(f"chunk_index {chunk_index} out of range [0, {n_chunks}) for split {split!r}")
        return _chunk_bounds(self.n_tasks(split), self.chunk_tasks, chunk_index)

    def chunk_is_done(self, split: str, chunk_index: int) -> bool:
        self.chunk_range(split, chunk_index)
        return bool(self._split(split)[_DONE][chunk_index])

    def write_chunk(self, split: str, chunk_index: int, arrays: Mapping[str, np.ndarray]) -> bool:
        """Write the tasks of chunk `chunk_index` of `split`, then mark it done.

        `arrays` maps every stored array name to values of shape ``(stop - start, ...)`` with
        the stored dtype. Returns False (writing nothing) if the chunk is already marked done:
        completed chunks are never rewritten, so retried tasks are harmless.
        """
        start, stop = self.chunk_range(split, chunk_index)
        sg = self._split(split)
        if bool(sg[_DONE][chunk_index]):
            return False
        names = set(self.array_names(split))
        missing, extra = names - set(arrays), set(arrays) - names
        if missing or extra:
            raise PriorStoreError(
                f"write_chunk({split!r}, {chunk_index}): missing arrays {sorted(missing)}, "
                f"unexpected arrays {sorted(extra)}"
            )
        for name in sorted(names):
            arr, value = sg[name], np.asarray(arrays[name])
            expected = (stop - start, *arr.shape[1:])
            if value.shape != expected:
                raise PriorStoreError(f"{split}/{name}: shape {value.shape}, expected {expected} (tasks {start}:{stop})")
            if value.dtype != arr.dtype:
                raise PriorStoreError(f"{split}/{name}: dtype {value.dtype}, expected {arr.dtype}")
        for name in sorted(names):
            sg[name][start:stop] = np.ascontiguousarray(arrays[name])
        # The marker goes last: a crash before this line leaves the chunk pending.
        sg[_DONE][chunk_index] = 1
        return True

    def pending_chunks(self) -> list[tuple[str, int, int, int]]:
        """(split, chunk_index, start, stop) of every chunk without a completion marker."""
        out = []
        for split in SPLITS:
            done = self._split(split)[_DONE][:]
            n = self.n_tasks(split)
            for c in np.flatnonzero(done == 0).tolist():
                out.append((split, c, *_chunk_bounds(n, self.chunk_tasks, c)))
        return out

    def compute_checksums(self) -> dict[str, str]:
        """Fresh checksums ("<split>/<array>" -> sha256 hex) of every data array."""
        return {
            f"{split}/{name}": _array_checksum(self._split(split)[name])
            for split in SPLITS
            for name in self.array_names(split)
        }

    def finalize(self) -> dict[str, str]:
        """Check every chunk is done, write the checksums as the very last attribute.

        Returns the checksums. Raises :class:`IncompleteStoreError` listing pending chunks.
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

    def verify(self, *, raise_error: bool = False) -> bool:
        """Recompute every checksum and compare with the stored ones.

        Returns True if all match. On a mismatch (or an undecodable chunk) logs which arrays
        differ and returns False, or raises :class:`StoreCorruptedError` if `raise_error`.
        """
        stored = self.checksums
        bad: list[str] = []
        for key, expected in stored.items():
            split, name = key.split("/", 1)
            try:
                actual = _array_checksum(self._split(split)[name])
            except Exception as exc:  # a truncated/garbled chunk fails to decode
                bad.append(f"{key} (unreadable: {exc})")
                continue
            if actual != expected:
                bad.append(f"{key} (stored {expected[:12]}..., recomputed {actual[:12]}...)")
        if bad:
            msg = f"{self.path}: checksum mismatch in {', '.join(bad)}"
            if raise_error:
                raise StoreCorruptedError(msg)
            log.error(msg)
            return False
        return True

    # ------------------------------------------------------------------ reading
    def read(self, split: str, start: int = 0, stop: int | None = None, as_torch: bool = False) -> dict:
        """Arrays of tasks ``start:stop`` of `split` (numpy, or torch tensors if `as_torch`)."""
        n = self.n_tasks(split)
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise PriorStoreError(f"read({split!r}, {start}, {stop}): range outside [0, {n}]")
        sg = self._split(split)
        out = {name: sg[name][start:stop] for name in self.array_names(split)}
        if as_torch:
            import torch

            out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
        return out

    # ------------------------------------------------------------------ helpers
    def _split(self, split: str) -> zarr.Group:
        if split not in SPLITS:
            raise PriorStoreError(f"split must be one of {SPLITS}, got {split!r}")
        return self._group[split]

    def __repr__(self) -> str:
        state = "complete" if self.is_complete else "incomplete"
        return f"PriorStore({str(self.path)!r}, hash={self.hash[:12]}, {state})"


def _json_plain(config: "PriorConfig") -> Any:
    """The config as plain JSON types (Zarr attributes reject numpy scalars)."""
    import json

    return json.loads(config.to_json())
