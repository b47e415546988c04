"""Intervention regimes: targets, hard values / soft mechanism changes, perturbation features.

Per task (``n`` real nodes in canonical positions ``0..n-1``, ``K`` regimes) we draw

- targets ``I: (K, d) bool``: regime k has ``m_k ~ U{1..min(max_targets, n)}`` distinct
  targets, uniform among real nodes (random keys, the m_k smallest win). With
  ``distinct_targets`` and ``max_targets == 1`` the K single targets are the first K entries
  of a concatenation of independent random permutations of the n nodes (each node once
  before any repeats);
- ``z: (K, d)``: ``N(0, 1)`` or ``sign * U[value_low, value_high]`` with a fair sign
  (``uniform_sign`` and ``beyond_range``; the latter is measured from the range's edge);
- ``soft_scale: (K, d) ~ U[soft_scale_min, soft_scale_max]``;
- perturbation map ``M: (d, p) ~ N(0, 1)`` and noise ``(K, p) ~ N(0, 1)`` (GIM features).

How they act (``mean_j``, ``std_j`` = empirical mean/std of X_j in the task's ``x_obs``):

- hard:  ``do(X_j = a_kj)``, ``a_kj = mean_j + value_scale * std_j * z_kj``;
- soft:  ``x_j = soft_scale_kj * f_j(x_pa) + value_scale * std_j * z_kj + eps_j``;
- perturbation: ``phi_k = I_k^T M + perturbation_noise * noise_k`` (``I_k`` in task labels).
"""

from __future__ import annotations

import numpy as np


def draw_interventions(int_cfg, n: int, d: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random intervention ingredients of one task (canonical node order, fixed shapes)."""
    k = int_cfg.n_regimes
    targets = np.zeros((k, d), dtype=bool)
    if k > 0:
        if int_cfg.distinct_targets and int_cfg.max_targets == 1:
            n_perms = -(-k // n)  # ceil(K / n)
            order = np.concatenate([rng.permutation(n) for _ in range(n_perms)])[:k]
            targets[np.arange(k), order] = True
        else:
            m = rng.integers(1, min(int_cfg.max_targets, n) + 1, size=k)  # (K,)
            keys = rng.random((k, d))
            keys[:, n:] = np.inf  # padding is never a target
            rank = np.argsort(np.argsort(keys, axis=1), axis=1)
            targets = rank < m[:, None]
    if int_cfg.value_dist == "gaussian":
        z = rng.standard_normal((k, d))
    else:
        sign = np.where(rng.random((k, d)) < 0.5, -1.0, 1.0)
        z = sign * rng.uniform(int_cfg.value_low, int_cfg.value_high, (k, d))
    soft_scale = rng.uniform(int_cfg.soft_scale_min, int_cfg.soft_scale_max, (k, d))
    p = int_cfg.perturbation_dim
    pert_map = rng.standard_normal((d, p))
    pert_noise = rng.standard_normal((k, p))
    return {
        "targets": targets,
        "z": z,
        "soft_scale": soft_scale,
        "pert_map": pert_map,
        "pert_noise": pert_noise,
    }


def perturbation_features(
    targets: np.ndarray, pert_map: np.ndarray, pert_noise: np.ndarray, noise_scale: float
) -> np.ndarray:
    """``phi: (T, K, p) = I (T, K, d) @ M (T, d, p) + noise_scale * noise (T, K, p)``."""
    return targets.astype(np.float64) @ pert_map + noise_scale * pert_noise
