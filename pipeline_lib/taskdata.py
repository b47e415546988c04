"""One task's arrays (DESIGN.md, "Data contract"), as methods and metrics see them.

A *task dict* holds the arrays of ONE task of a stored prior, the task axis dropped
(``x_obs: (n_obs, d_max)``, ``x_int: (K, n_int, d_max)``, ``node_mask: (d_max,)``, ...).
Methods work on the real nodes only: :func:`restrict` drops the padding.
"""
from __future__ import annotations

import numpy as np


def task_slice(batch: dict, t: int) -> dict:
    """The arrays of task ``t`` of a batch dict (drops the T axis)."""
    return {k: np.asarray(v[t]) for k, v in batch.items()}


def real_nodes(task: dict) -> np.ndarray:
    """Indices of the real (unpadded) nodes of one task."""
    return np.flatnonzero(np.asarray(task["node_mask"], dtype=bool))


def restrict(task: dict) -> dict:
    """One task's data restricted to its real nodes: what per-dataset methods see.

    Keys: ``x_obs (N, d)`` and ``x_int (K, n_int, d)`` float64, ``int_targets (K, d)`` bool,
    ``int_values (K, d)``, ``adjacency (d, d)`` uint8 (when the task has them), and the
    optional ``noise_obs (N, d)``, ``x_cf (K, N, d)``, ``perturbation (K, p)``.
    """
    nodes = real_nodes(task)
    out = {
        "x_obs": np.asarray(task["x_obs"], dtype=np.float64)[:, nodes],
        "x_int": np.asarray(task["x_int"], dtype=np.float64)[..., nodes],
        "int_targets": np.asarray(task["int_targets"], dtype=bool)[:, nodes],
        "int_values": np.asarray(task["int_values"])[:, nodes],
    }
    if "adjacency" in task:
        out["adjacency"] = np.asarray(task["adjacency"])[np.ix_(nodes, nodes)].astype(np.uint8)
    for key in ("noise_obs", "x_cf"):
        if key in task:
            out[key] = np.asarray(task[key], dtype=np.float64)[..., nodes]
    if "perturbation" in task:
        out["perturbation"] = np.asarray(task["perturbation"], dtype=np.float64)
    return out
