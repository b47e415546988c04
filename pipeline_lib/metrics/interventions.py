"""Intervention-target metrics (MetaCaDI, BaCaDI, GIM, DCDI with unknown targets).

A method predicts, for each of ``K`` interventional regimes, the probability that node
``j`` was intervened on: ``target_probs: (K, d)``. The truth is ``true_targets: (K, d)``
(bool). Intv-AUROC / Intv-AUPRC rank *all* (regime, node) entries together:

    Intv-AUROC = AUROC({(k, j)}: label true_targets[k, j], score target_probs[k, j]),

with ties counted 1/2 (Mann-Whitney), and Intv-AUPRC the average precision over distinct
score thresholds (see :mod:`pipeline_lib.metrics.stats`). Padded nodes (beyond a task's
real ``d``) are dropped with ``node_mask``: ``(d,)`` for all regimes or ``(K, d)``.
Leading batch axes are allowed (e.g. ``(T, K, d)`` pools the entries of ``T`` tasks).
Both scores are ``nan`` (with a :class:`~pipeline_lib.metrics.stats.MetricUndefinedWarning`)
when the selected entries hold a single class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline_lib.metrics.graph import to_numpy
from pipeline_lib.metrics.stats import auroc, average_precision

__all__ = ["intervention_auroc", "intervention_auprc"]


def _select(true_targets: Any, target_probs: Any, node_mask: Any) -> tuple[np.ndarray, np.ndarray]:
    t = to_numpy(true_targets)
    p = to_numpy(target_probs).astype(np.float64)
    if t.ndim < 2:
        raise ValueError(f"true_targets must have shape (K, d), got {t.shape}")
    if p.shape != t.shape:
        raise ValueError(f"target_probs must have shape {t.shape}, got {p.shape}")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("true_targets must be boolean / 0-1")
    if not np.all(np.isfinite(p)):
        raise ValueError("target_probs must be finite")
    t = t.astype(bool)
    if node_mask is None:
        return t.reshape(-1), p.reshape(-1)
    mask = to_numpy(node_mask).astype(bool)
    try:
        mask = np.broadcast_to(mask if mask.ndim > 1 else mask[None, :], t.shape)
    except ValueError:
        raise ValueError(
            f"node_mask of shape {to_numpy(node_mask).shape} does not broadcast to {t.shape}"
        ) from None
    return t[mask], p[mask]


def intervention_auroc(true_targets: Any, target_probs: Any, node_mask: Any = None) -> float:
    """AUROC of ``target_probs: (K, d)`` against ``true_targets: (K, d)`` over all
    (regime, node) entries kept by ``node_mask`` (``(d,)`` or ``(K, d)``)."""
    labels, scores = _select(true_targets, target_probs, node_mask)
    return auroc(labels, scores)


def intervention_auprc(true_targets: Any, target_probs: Any, node_mask: Any = None) -> float:
    """Average precision of ``target_probs: (K, d)`` against ``true_targets: (K, d)``
    over all (regime, node) entries kept by ``node_mask``."""
    labels, scores = _select(true_targets, target_probs, node_mask)
    return average_precision(labels, scores)
