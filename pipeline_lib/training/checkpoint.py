"""Training checkpoints: atomic writes, full RNG capture, and loading that runs no code.

A checkpoint is a ``torch.save`` dict holding everything a resumed run needs
to continue *bitwise* identically on CPU: model, optimiser and scheduler
states, torch (CPU and CUDA) and numpy global RNG states, the step counter
and the metric history. Writes go to a temporary file in the same directory
followed by ``os.replace``, so a crash mid-write never leaves a truncated
``last.pt`` behind (POSIX rename is atomic within a filesystem).

Only tensors and plain containers (dict, list, tuple, str, int, float, bool,
None) go in, so :func:`load_checkpoint` reads with ``torch.load(weights_only=True)``:
a checkpoint folder may be shared or copied from elsewhere, and a full unpickle
would run whatever code a crafted file names. The numpy RNG state is stored as
a tensor for that reason (``np.random.get_state()`` is a tuple with an ndarray).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(ValueError):
    """A checkpoint file that is refused (not plain tensors and containers) or unreadable."""


# Checkpoints written before the numpy RNG state became a tensor hold a uint32 ndarray;
# these globals rebuild exactly that (a numeric array from raw bytes) and nothing else.
_LEGACY_NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (tmp file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file holds anything but tensors and plain containers (e.g. a
            pickled object whose ``__reduce__`` would run code); nothing of it is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported" in ln), str(exc).splitlines()[0])
        raise CheckpointError(
            f"{path}: refused to load: it holds more than tensors and plain containers ({reason}); "
            "checkpoints are read with weights_only=True so a crafted file cannot run code"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc.__class__.__name__}: {exc})") from None


def capture_rng_state() -> dict[str, Any]:
    """Global torch CPU/CUDA and numpy RNG states, as tensors and plain values only."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA part only where CUDA exists)."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        key = np_state["key"].cpu().numpy().astype(np.uint32)
        np.random.set_state((np_state["kind"], key, np_state["pos"], np_state["has_gauss"],
                             np_state["cached_gaussian"]))
    else:  # the tuple form of checkpoints written before the tensor form
        np.random.set_state(np_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
