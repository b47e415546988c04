"""Exogenous noise: zero-mean, unit-variance draws, scaled per node by its noise std.

``eps_j = s_j * u_j`` with ``E[u] = 0``, ``Var[u] = 1``:

- gaussian: ``u ~ N(0, 1)``
- laplace:  ``u ~ Laplace(0, b)``, ``b = 1/sqrt(2)`` so ``Var = 2 b^2 = 1``
- uniform:  ``u ~ Uniform[-sqrt(3), sqrt(3)]`` so ``Var = (2 sqrt 3)^2 / 12 = 1``
"""

from __future__ import annotations

import numpy as np

_SQRT3 = float(np.sqrt(3.0))


def standard_noise(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise of the given ``kind``; float64 array of ``shape``."""
    if kind == "gaussian":
        return rng.standard_normal(shape)
    if kind == "laplace":
        return rng.laplace(0.0, 1.0 / np.sqrt(2.0), shape)
    if kind == "uniform":
        return rng.uniform(-_SQRT3, _SQRT3, shape)
    raise ValueError(f"noise.kind={kind!r}: unknown noise kind")


def noise_scales(noise_cfg, d_max: int, rng: np.random.Generator) -> np.ndarray:
    """Per-node noise std ``s: (d_max,) ~ Uniform[scale_min, scale_max]``."""
    return rng.uniform(noise_cfg.scale_min, noise_cfg.scale_max, d_max)
