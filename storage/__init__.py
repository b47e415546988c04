"""Persistence: Zarr prior stores (and, elsewhere in this package, checkpoints and tracking).

torch datasets over stores live in `storage.datasets` (not imported here: torch is slow to
import and the CLI imports this package).
"""
from storage.prior_store import (
    SPLITS,
    ArraySpec,
    IncompleteStoreError,
    PriorStore,
    PriorStoreError,
    StoreConfigMismatchError,
    StoreCorruptedError,
    prior_layout,
    store_path,
)

__all__ = [
    "SPLITS",
    "ArraySpec",
    "IncompleteStoreError",
    "PriorStore",
    "PriorStoreError",
    "StoreConfigMismatchError",
    "StoreCorruptedError",
    "prior_layout",
    "store_path",
]
