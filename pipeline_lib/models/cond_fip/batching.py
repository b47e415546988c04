"""Cond-FiP training examples from prior tasks (deterministic given the step's ``rng``).

For every task ``t`` of a task dict (leading task axis, nodes padded to ``d_max``), the
``n_obs`` observational rows are shuffled (one uniform permutation per task) and split::

    context C_t = first n_c rows      -> x_ctx, noise_ctx   (embedding + noise loss)
    target  T_t = next  n_t rows      -> x_tgt, f_tgt = x_tgt - noise_tgt   (decoder loss)

with ``n_t = min(n_target, floor(n_obs / 2))`` and ``n_c = min(n, n_obs - n_t)`` where
``n = n_embed``, or ``n ~ U{n_embed_min..n_embed}`` drawn once per batch (one size per
batch: no sample padding, so ``ctx_mask`` is all True). ``f_tgt`` is the true mechanism
value ``f(x_pa)`` at the fixed point: ``x = f(x) + n``.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from pipeline_lib.models.cond_fip.model import CondFiPConfig

_FIELDS = ("x_obs", "noise_obs", "node_mask", "adjacency")


def cond_fip_batch(tasks: Mapping[str, np.ndarray], rng: np.random.Generator, *, n_embed: int,
                   n_target: int, n_embed_min: int | None = None) -> dict[str, np.ndarray]:
    """One training example per task (module docstring).

    Returns numpy arrays ``x_ctx, noise_ctx (T, n_c, d) f32``, ``ctx_mask (T, n_c) bool``,
    ``x_tgt, f_tgt (T, n_t, d) f32``, ``tgt_mask (T, n_t) bool``, ``node_mask (T, d) bool``,
    ``adjacency (T, d, d) u8``.
    """
    missing = [k for k in _FIELDS if k not in tasks]
    if missing:
        raise ValueError(f"task dict is missing fields {missing} (Cond-FiP needs noise_obs and adjacency)")
    x = np.asarray(tasks["x_obs"], dtype=np.float32)
    noise = np.asarray(tasks["noise_obs"], dtype=np.float32)
    node_mask = np.asarray(tasks["node_mask"], dtype=bool)
    adj = np.asarray(tasks["adjacency"], dtype=np.uint8)
    if x.ndim != 3:
        raise ValueError(f"x_obs must be (T, n_obs, d), got shape {x.shape}")
    t_n, n_obs, d = x.shape
    if noise.shape != x.shape:
        raise ValueError(f"noise_obs must have the shape of x_obs {x.shape}, got {noise.shape}")
    if node_mask.shape != (t_n, d) or adj.shape != (t_n, d, d):
        raise ValueError(f"node_mask/adjacency must be ({t_n}, {d}) / ({t_n}, {d}, {d}), "
                         f"got {node_mask.shape} / {adj.shape}")
    real = node_mask[:, None, :]
    if not np.isfinite(np.where(real, x, 0.0)).all():
        raise ValueError("x_obs has NaN/inf entries on real nodes")
    if not np.isfinite(np.where(real, noise, 0.0)).all():
        raise ValueError("noise_obs has NaN/inf entries on real nodes (a prior without additive noise, e.g. grn?)")
    if n_obs < 2:
        raise ValueError(f"x_obs: need at least 2 rows per task, got {n_obs}")
    lo = n_embed if n_embed_min is None else n_embed_min
    n_c_draw = int(rng.integers(lo, n_embed + 1))
    n_t = min(n_target, n_obs // 2)
    n_c = min(n_c_draw, n_obs - n_t)
    order = np.argsort(rng.random((t_n, n_obs)), axis=1)  # (T, n_obs) a permutation per task
    ctx, tgt = order[:, :n_c, None], order[:, n_c:n_c + n_t, None]
    x_ctx = np.take_along_axis(x, ctx, axis=1)
    x_tgt = np.take_along_axis(x, tgt, axis=1)
    noise_ctx = np.take_along_axis(noise, ctx, axis=1)
    f_tgt = x_tgt - np.take_along_axis(noise, tgt, axis=1)
    zero = np.float32(0.0)
    return {
        "x_ctx": np.where(real, x_ctx, zero),
        "noise_ctx": np.where(real, noise_ctx, zero),
        "ctx_mask": np.ones((t_n, n_c), dtype=bool),
        "x_tgt": np.where(real, x_tgt, zero),
        "f_tgt": np.where(real, f_tgt, zero),
        "tgt_mask": np.ones((t_n, n_t), dtype=bool),
        "node_mask": node_mask,
        "adjacency": adj,
    }


def make_batch(config: CondFiPConfig) -> Callable[[Mapping[str, np.ndarray], np.random.Generator], dict]:
    """The ``(tasks, rng) -> batch`` function for :class:`pipeline_lib.models.registry.MethodSpec`."""

    def fn(tasks: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        return cond_fip_batch(tasks, rng, n_embed=config.n_embed, n_target=config.n_target,
                              n_embed_min=config.n_embed_min)

    return fn
