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


class TaskDataError(ValueError):
    """One task's arrays do not fit the data contract (the message names the field)."""


def real_nodes(task: dict) -> np.ndarray:
    """Indices of the real (unpadded) nodes of one task."""
    return np.flatnonzero(np.asarray(task["node_mask"], dtype=bool))


def check_task(task: dict) -> None:
    """Validate ONE task at a method's entry: shapes, node mask, finite data, enough rows.

    Every method is reached through :func:`restrict`, so a NaN, a 1-D array or a node mask of
    the wrong size is one clear error here instead of NaN output or a torch shape error.
    """
    for key in ("x_obs", "node_mask"):
        if key not in task:
            raise TaskDataError(f"{key}: missing from the task")
    x = np.asarray(task["x_obs"])
    mask = np.asarray(task["node_mask"])
    if x.ndim != 2:
        raise TaskDataError(f"x_obs: expected shape (n_obs, d) for one task, got {x.shape}")
    if mask.shape != (x.shape[1],):
        raise TaskDataError(f"node_mask: shape {mask.shape} does not match x_obs's {x.shape[1]} nodes")
    nodes = np.flatnonzero(mask.astype(bool))
    if len(nodes) == 0:
        raise TaskDataError("node_mask: the task has no real node")
    if x.shape[0] < 2:
        raise TaskDataError(f"x_obs: {x.shape[0]} observational rows; at least 2 are needed")
    bad = int((~np.isfinite(x[:, nodes].astype(np.float64))).sum())
    if bad:
        raise TaskDataError(f"x_obs: {bad} NaN/inf values on real nodes")
    if "x_int" in task:
        xi, k = np.asarray(task["x_int"]), np.asarray(task.get("int_targets", np.zeros((0, x.shape[1]))))
        if xi.ndim != 3 or xi.shape[2] != x.shape[1]:
            raise TaskDataError(f"x_int: expected shape (K, n_int, {x.shape[1]}), got {xi.shape}")
        if k.shape != (xi.shape[0], x.shape[1]):
            raise TaskDataError(f"int_targets: expected shape ({xi.shape[0]}, {x.shape[1]}), got {k.shape}")
        bad = int((~np.isfinite(xi[..., nodes].astype(np.float64))).sum())
        if bad:
            raise TaskDataError(f"x_int: {bad} NaN/inf values on real nodes")


def holdout_int_rows(task: dict, fraction: float) -> tuple[dict, dict]:
    """Split each regime's interventional rows of ONE task into (seen, scored) task dicts.

    ``seen`` keeps the first ``n_int - m`` rows of every regime of ``x_int``, ``scored`` the
    last ``m = round(fraction * n_int)``; every other array is shared. Methods are fitted on
    ``seen`` and NLPID scores ``scored``, so a method that fits on interventional data (DCDI,
    BaCaDI, MetaCaDI, GIM) is never scored on rows it was fitted on. ``fraction`` 0: both are
    the task itself. The rows of a regime are exchangeable draws, so the first / last split
    is a random one.
    """
    if not (0.0 <= float(fraction) < 1.0) or not np.isfinite(fraction):
        raise ValueError(f"int_holdout: the held-out fraction of interventional rows must be in [0, 1), got {fraction!r}")
    if fraction == 0 or "x_int" not in task:
        return task, task
    x_int = np.asarray(task["x_int"])
    n_int = x_int.shape[-2]
    m = int(round(fraction * n_int))
    if m < 1 or n_int - m < 1:
        raise TaskDataError(f"x_int: {n_int} interventional rows per regime cannot be split with int_holdout "
                            f"{fraction} (needs at least one seen and one scored row)")
    return {**task, "x_int": x_int[..., : n_int - m, :]}, {**task, "x_int": x_int[..., n_int - m:, :]}


def restrict(task: dict) -> dict:
    """One task's data restricted to its real nodes: what per-dataset methods see.

    Keys: ``x_obs (N, d)`` and ``x_int (K, n_int, d)`` float64, ``int_targets (K, d)`` bool,
    ``int_values (K, d)``, ``adjacency (d, d)`` uint8 (when the task has them), and the
    optional ``noise_obs (N, d)``, ``x_cf (K, N, d)``, ``perturbation (K, p)`` and ``scm`` (a
    reference to the generating prior task, for the oracle; absent for imported data).
    """
    check_task(task)
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
    if "scm" in task:  # where the task came from: {"config": PriorConfig JSON, "split", "index"}
        out["scm"] = task["scm"]
    return out
