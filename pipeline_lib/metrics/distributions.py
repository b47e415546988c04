"""Distribution metrics: NLPID, MMD, energy distance, RMSE, predictive-interval coverage.

* **NLPID** (MACE-TNP's headline metric). For one test task with intervention
  ``do(X_j = a)``, outcome ``X_i`` and ``M`` true interventional samples ``x^1..x^M``::

      NLPID_sum  = - sum_{m=1}^M log p(x_i^m | do(X_j = a), D_obs),
      NLPID_mean = NLPID_sum / M.

  The papers report the per-task sum; across ``T`` tasks we report
  ``mean +- s.e.``, ``s.e. = std_{ddof=1} / sqrt(T)``.
* **MMD** with the RBF kernel ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``; ``sigma`` is
  the median heuristic, the median Euclidean distance over all pairs ``i < j`` of the
  pooled sample ``x ∪ y`` (fallback ``sigma = 1`` when that median is 0). Unbiased
  U-statistic (Gretton et al. 2012, eq. 3)::

      MMD_u^2 = 1/(n(n-1)) sum_{i != i'} k(x_i, x_i') + 1/(m(m-1)) sum_{j != j'} k(y_j, y_j')
                - 2/(n m) sum_{i, j} k(x_i, y_j).

  Being unbiased, it fluctuates around 0 for equal distributions and **can be
  negative**; it is returned as is (not clipped), so averages over tasks stay unbiased.
* **Energy distance** ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Szekely & Rizzo), Euclidean
  norms. ``unbiased=True`` (default) uses U-statistics for the within-sample terms
  (``i != i'``, unbiased, may be slightly negative); ``unbiased=False`` the V-statistic
  (all pairs incl. ``i = i'``, always ``>= 0``; in 1-D it equals
  ``scipy.stats.energy_distance(x, y) ** 2``).
* **RMSE** ``sqrt(mean((pred - true)^2))`` over the kept entries, optionally per axis,
  with a node mask and a per-node scale (Cond-FiP reports RMSE on standardised data:
  pass ``scale = true.std(axis=sample_axis)``).
* **Coverage** of central predictive intervals: the fraction of true samples inside
  ``[Q((1 - a)/2), Q((1 + a)/2)]`` for nominal level ``a``.

Pairwise distances use ``scipy.spatial.distance.cdist`` (``O((n + m)^2)`` memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy.spatial.distance import cdist, pdist

from pipeline_lib.metrics.graph import to_numpy

__all__ = [
    "NLPIDResult",
    "nlpid",
    "aggregate_nlpid",
    "median_heuristic_bandwidth",
    "mmd_rbf",
    "energy_distance",
    "rmse",
    "interval_coverage",
    "coverage_table",
]


# --------------------------------------------------------------------------- NLPID


@dataclass(frozen=True)
class NLPIDResult:
    """NLPID of one test task: ``sum = -sum_m log p(x^m)``, ``mean = sum / n``."""

    sum: float
    mean: float
    n: int


def nlpid(
    log_density: np.ndarray | Callable[[np.ndarray], Any], samples: Any = None
) -> NLPIDResult:
    """NLPID of one task from ``M`` log densities of the true interventional samples.

    ``log_density`` is either an array ``(M,)`` of ``log p(x_i^m | do(X_j = a), D_obs)``,
    or a callable ``log_density_fn(samples) -> (M,)`` evaluated on ``samples: (M,)`` or
    ``(M, ...)``. ``-inf`` log densities give an infinite NLPID (a model that puts zero
    mass on observed data); ``nan`` or ``+inf`` raise ``ValueError``.
    """
    if callable(log_density):
        if samples is None:
            raise ValueError("samples is required when log_density is a callable")
        x = to_numpy(samples)
        lp = to_numpy(log_density(samples)).astype(np.float64)
        if lp.shape != (x.shape[0],):
            raise ValueError(
                f"log_density(samples) must return shape ({x.shape[0]},), got {lp.shape}"
            )
    else:
        if samples is not None:
            raise ValueError("samples must be None when log_density is an array")
        lp = to_numpy(log_density).astype(np.float64)
        if lp.ndim != 1:
            raise ValueError(f"log_density must have shape (M,), got {lp.shape}")
    if lp.size == 0:
        raise ValueError("log_density holds no samples (M = 0)")
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise ValueError("log_density contains nan or +inf")
    total = float(-lp.sum())
    return NLPIDResult(sum=total, mean=total / lp.size, n=int(lp.size))


def aggregate_nlpid(
    results: Sequence[NLPIDResult] | Iterable[float] | np.ndarray, field: str = "sum"
) -> tuple[float, float]:
    """``(mean, s.e.)`` over tasks, ``s.e. = std(ddof=1) / sqrt(T)`` (nan when T = 1).

    ``results``: :class:`NLPIDResult` objects (``field`` picks ``"sum"`` or ``"mean"``)
    or plain per-task values. Unlike :func:`~pipeline_lib.metrics.stats.mean_se`,
    infinite values are *kept* (a task scored ``inf`` makes the mean ``inf``): a method
    that assigns zero density must not look good by dropping that task. ``nan`` raises.
    """
    if field not in ("sum", "mean"):
        raise ValueError(f"field must be 'sum' or 'mean', got {field!r}")
    items = list(results)
    if not items:
        raise ValueError("results is empty")
    if all(isinstance(r, NLPIDResult) for r in items):
        v = np.array([getattr(r, field) for r in items], dtype=np.float64)
    elif any(isinstance(r, NLPIDResult) for r in items):
        raise ValueError("results mixes NLPIDResult objects and plain numbers")
    else:
        v = to_numpy(items).astype(np.float64).reshape(-1)
    if np.isnan(v).any():
        raise ValueError("results contains nan")
    if not np.all(np.isfinite(v)):
        return float(v.mean()), float("nan")
    from pipeline_lib.metrics.stats import mean_se

    return mean_se(v)


# --------------------------------------------------------------------------- two-sample distances


def _as_samples(x: Any, name: str) -> np.ndarray:
    a = to_numpy(x).astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (n,) or (n, p), got {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {a.shape[0]}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    return a


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = _as_samples(x, "x"), _as_samples(y, "y")
    if xa.shape[1] != ya.shape[1]:
        raise ValueError(f"x has dimension {xa.shape[1]} but y has {ya.shape[1]}")
    return xa, ya


def median_heuristic_bandwidth(x: Any, y: Any) -> float:
    """``sigma`` = median Euclidean distance over pairs ``i < j`` of the pooled sample
    (1.0 if that median is 0, e.g. mostly repeated points)."""
    xa, ya = _pair(x, y)
    med = float(np.median(pdist(np.vstack([xa, ya]))))
    return med if med > 0 else 1.0


def mmd_rbf(x: Any, y: Any, bandwidth: float | None = None) -> float:
    """Unbiased ``MMD^2`` between samples ``x: (n, p)`` and ``y: (m, p)`` (1-D allowed)
    with the RBF kernel ``exp(-||a - b||^2 / (2 sigma^2))``, ``sigma = bandwidth`` or the
    median heuristic. May be negative (see module doc)."""
    xa, ya = _pair(x, y)
    sigma = median_heuristic_bandwidth(xa, ya) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    gamma = 1.0 / (2.0 * sigma**2)
    n, m = xa.shape[0], ya.shape[0]
    kxx = np.exp(-gamma * cdist(xa, xa, "sqeuclidean"))
    kyy = np.exp(-gamma * cdist(ya, ya, "sqeuclidean"))
    kxy = np.exp(-gamma * cdist(xa, ya, "sqeuclidean"))
    # diagonals are exactly exp(0) = 1: drop them for the U-statistic
    sxx = (kxx.sum() - n) / (n * (n - 1))
    syy = (kyy.sum() - m) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def energy_distance(x: Any, y: Any, unbiased: bool = True) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` between ``x: (n, p)`` and
    ``y: (m, p)``; U-statistics within samples if ``unbiased`` else V-statistics."""
    xa, ya = _pair(x, y)
    n, m = xa.shape[0], ya.shape[0]
    dxy = cdist(xa, ya).mean()
    sxx = cdist(xa, xa).sum()
    syy = cdist(ya, ya).sum()
    if unbiased:
        exx, eyy = sxx / (n * (n - 1)), syy / (m * (m - 1))
    else:
        exx, eyy = sxx / n**2, syy / m**2
    return float(2.0 * dxy - exx - eyy)


# --------------------------------------------------------------------------- RMSE


def rmse(
    pred: Any,
    true: Any,
    axis: int | tuple[int, ...] | None = None,
    node_mask: Any = None,
    scale: Any = None,
) -> float | np.ndarray:
    """Root mean squared error ``sqrt(sum w e^2 / sum w)``, ``e = (pred - true) / scale``.

    ``pred`` and ``true`` have equal shapes, e.g. ``(n, d)`` samples or ``(T, n, d)``.
    ``node_mask`` (broadcast against them, typically ``(d,)`` or ``(T, 1, d)``) gives
    weights ``w`` in {0, 1}: padded nodes are excluded from both sums. ``scale``
    (broadcast, e.g. per-node std ``(d,)``) standardises the errors. ``axis=None``
    returns one float; otherwise the RMSE per remaining index (nan where nothing is
    kept), e.g. ``axis=0`` on ``(n, d)`` gives the per-node RMSE ``(d,)``.
    """
    p = to_numpy(pred).astype(np.float64)
    t = to_numpy(true).astype(np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred has shape {p.shape} but true has {t.shape}")
    err = p - t
    if node_mask is None:
        w = np.ones_like(err)
    else:
        try:
            w = np.broadcast_to(to_numpy(node_mask).astype(np.float64), err.shape)
        except ValueError:
            raise ValueError(
                f"node_mask of shape {to_numpy(node_mask).shape} does not broadcast to {err.shape}"
            ) from None
    if scale is not None:
        try:
            s = np.broadcast_to(to_numpy(scale).astype(np.float64), err.shape)
        except ValueError:
            raise ValueError(
                f"scale of shape {to_numpy(scale).shape} does not broadcast to {err.shape}"
            ) from None
        kept = w > 0  # padded nodes may have scale 0 (constant padding): only check kept ones
        if np.any(~(s[kept] > 0)) or not np.all(np.isfinite(s[kept])):
            raise ValueError("scale must be positive and finite on the kept entries")
        err = np.where(kept, err / np.where(kept, s, 1.0), 0.0)
    sq = np.where(w > 0, err**2, 0.0)  # masked entries may hold padding garbage / nan
    den = w.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.sqrt((w * sq).sum(axis=axis) / den)
    if axis is None:
        if den == 0:
            raise ValueError("node_mask keeps no entry")
        return float(out)
    return out


# --------------------------------------------------------------------------- coverage


def interval_coverage(lower: Any, upper: Any, samples: Any) -> float | np.ndarray:
    """Fraction of ``samples: (M,)`` inside each interval ``[lower_l, upper_l]``.

    ``lower``, ``upper``: scalars or ``(L,)`` -> float or ``(L,)`` coverages
    ``c_l = (1/M) sum_m 1[lower_l <= x_m <= upper_l]``.
    """
    lo = to_numpy(lower).astype(np.float64)
    hi = to_numpy(upper).astype(np.float64)
    x = to_numpy(samples).astype(np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"samples must have shape (M,) with M >= 1, got {x.shape}")
    if lo.shape != hi.shape or lo.ndim > 1:
        raise ValueError(f"lower/upper must be scalars or (L,) of equal shape: {lo.shape}, {hi.shape}")
    if np.any(lo > hi):
        raise ValueError("lower exceeds upper for some interval")
    inside = (x[None, :] >= lo.reshape(-1, 1)) & (x[None, :] <= hi.reshape(-1, 1))
    cov = inside.mean(axis=1)
    return float(cov[0]) if lo.ndim == 0 else cov


def coverage_table(
    predictive: Callable[[np.ndarray], Any] | Any,
    samples: Any,
    levels: Sequence[float] = (0.5, 0.9),
) -> Mapping[float, float]:
    """Empirical coverage of central predictive intervals, ``{level: fraction}``.

    ``predictive`` is a quantile function ``q -> Q(q)`` (vectorised over an array of
    probabilities) or an array of predictive samples ``(N,)`` whose empirical quantiles
    (``np.quantile``, linear interpolation) are used. Level ``a`` uses the interval
    ``[Q((1 - a)/2), Q((1 + a)/2)]``; a calibrated predictive gives coverage ``~ a``
    with standard error ``sqrt(a (1 - a) / M)``.
    """
    lv = np.asarray(levels, dtype=np.float64).reshape(-1)
    if lv.size == 0 or np.any((lv <= 0) | (lv >= 1)):
        raise ValueError(f"levels must lie in (0, 1), got {list(levels)}")
    probs = np.concatenate([(1 - lv) / 2, (1 + lv) / 2])
    if callable(predictive):
        q = to_numpy(predictive(probs)).astype(np.float64).reshape(-1)
        if q.shape != probs.shape:
            raise ValueError(f"quantile function returned shape {q.shape}, expected {probs.shape}")
    else:
        pred = to_numpy(predictive).astype(np.float64).reshape(-1)
        if pred.size < 2:
            raise ValueError("predictive samples need at least 2 values")
        q = np.quantile(pred, probs)
    cov = interval_coverage(q[: lv.size], q[lv.size :], samples)
    return {float(a): float(c) for a, c in zip(lv, np.atleast_1d(cov))}
