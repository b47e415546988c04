"""Per-task evaluation results, next to the prior they were computed on.

Layout: ``<root>/results/<prior-name>-<hash12>/bytes-<content16>/<method key>/task_<split>_<index>.json``
(+ ``.npz`` with summary arrays such as edge probabilities). ``content16`` is the start of the
store's :attr:`~storage.prior_store.PriorStore.content_digest` (a hash over its per-array
checksums), so results are tied to the bytes they were computed from, not to the store's
name: a store regenerated with other bytes gets a fresh namespace, while a repair that
restores the same bytes keeps its results. A method key pins what produced the
numbers: ``<baseline>-<config hash8>`` or ``<method>-v<registered model version>``, so results
are reused exactly when (method version, prior bytes) match, and recomputed otherwise.
Records written before this layout (directly under ``<prior-name>-<hash12>/<method key>``)
stay on disk but are not reused: nothing says which bytes they were computed from.
A record holds ``status`` (``ok`` | ``failed``), ``error`` (the message when failed) and the
metrics; failed records are kept (never silently dropped) and retried on the next run.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def config_key(name: str, config: dict[str, Any] | None) -> str:
    """``<name>-<sha256(config)[:8]>``; the flows pass the FULL typed config (defaults
    included), so a changed default gets fresh results instead of reusing stale ones."""
    blob = json.dumps(config or {}, sort_keys=True, separators=(",", ":"), default=str)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


class ResultStore:
    """Per-task JSON records of one prior (``prior_dir_name``: a relative folder under results/)."""

    def __init__(self, root: str | Path, prior_dir_name: str | Path):
        self.dir = Path(root) / "results" / prior_dir_name

    @classmethod
    def for_store(cls, root: str | Path, store_path: str | Path) -> "ResultStore":
        """Results of a finalized prior store, keyed by its name and its content digest.

        Opens the store (refusing an incomplete one) to read its checksums.
        """
        from storage.prior_store import PriorStore

        digest = PriorStore.open(store_path).content_digest
        return cls(root, Path(Path(store_path).name.removesuffix(".zarr")) / f"bytes-{digest[:16]}")

    def _path(self, method_key: str, split: str, index: int, ext: str) -> Path:
        return self.dir / method_key / f"task_{split}_{index:05d}.{ext}"

    def load(self, method_key: str, split: str, index: int) -> dict[str, Any] | None:
        p = self._path(method_key, split, index, "json")
        if not p.is_file():
            return None
        return json.loads(p.read_text())

    def save(self, method_key: str, split: str, index: int, record: dict[str, Any],
             arrays: dict[str, np.ndarray] | None = None) -> Path:
        p = self._path(method_key, split, index, "json")
        p.parent.mkdir(parents=True, exist_ok=True)
        if arrays:
            tmp = p.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, p.with_suffix(".npz"))
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=float))
        os.replace(tmp, p)  # atomic: a crash never leaves a half-written record
        return p

    def collect(self, method_key: str, split: str = "test") -> list[dict[str, Any]]:
        d = self.dir / method_key
        return [json.loads(p.read_text()) for p in sorted(d.glob(f"task_{split}_*.json"))]
