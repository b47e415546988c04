"""Gene regulatory network (GRN) simulator in the style of SERGIO (Dibaeinia & Sinha 2020).

Genes are the nodes of the task's DAG; ``A[i, j] = 1`` means gene i regulates gene j with
interaction strength ``K_ij`` (``|K_ij| ~ U[k_min, k_max]``, activating with probability
``p_activation``, else repressing). Master regulators (roots) have a basal production rate
``b_cj ~ U[basal_min, basal_max]`` per cell type c; other genes have none.

Production of gene j in a cell of type c (Hill kinetics, coefficient n):

    P_j(x) = b_cj + sum_{i in pa(j)} |K_ij| * ( H(x_i; h_i)       if K_ij > 0
                                               1 - H(x_i; h_i)   if K_ij < 0 ),
    H(x; h) = x^n / (h^n + x^n).

The half-response ``h_i`` is the mean expression of regulator i over cell types at the
deterministic steady state, computed in topological order (SERGIO's layer-wise rule):
``xbar_cj = P_j(xbar_c) / lambda`` with every Hill term of a parent evaluated at its own
mean, i.e. ``H(xbar_ci; h_i)`` with ``h_i = mean_c xbar_ci``.

mRNA dynamics: the chemical Langevin equation, integrated by Euler-Maruyama from the
deterministic steady state of the cell's type, keeping the last state of each cell:

    dx_j = (P_j(x) - lambda x_j) dt + q ( sqrt(P_j(x)) dW1 + sqrt(lambda x_j) dW2 ),
    x_j <- max(x_j, 0) after every step.

Interventions act on production: a hard intervention is a **knockout**
(``P_j = 0`` and ``x_j(0) = 0``, so ``x_j = 0`` throughout; ``int_values`` = 0 in raw units),
a soft intervention a **knockdown / over-expression** ``P_j <- soft_scale * P_j``.

Technical noise (``technical_noise``), SERGIO's measurement model in simplified form:
outlier genes (probability ``outlier_prob``, expression times LogNormal(outlier_mean,
outlier_sigma)), a per-cell library-size factor LogNormal(0, library_size_sigma), dropout
with keep probability ``sigmoid(dropout_shape * (log(1 + x) - q_p))`` where ``q_p`` is the
``dropout_percentile``-th percentile of ``log(1 + x)`` over the task's cells and real genes,
and finally Poisson counts ``Poisson(x)``.

Simplifications (vs SERGIO): one steady-state snapshot per cell (no differentiation
trajectories), a fixed decay ``lambda`` and noise amplitude ``q`` for all genes, the library
size as a multiplicative factor rather than a rescaling to a drawn total count.
There is no additive exogenous noise, so ``noise_obs`` is NaN for this mechanism.
"""

from __future__ import annotations

import numpy as np


def draw_params(grn_cfg, adj: np.ndarray, n: int, n_cells: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Interaction matrix, basal rates and cell types of one task.

    ``k_pos, k_neg: (d, d)`` activating / repressing strengths (zero off the graph),
    ``basal: (C, d)`` (zero for non-roots and padding), ``cell_type: (n_cells,)`` int.
    """
    d = adj.shape[0]
    a = adj.astype(np.float64)
    strength = rng.uniform(grn_cfg.k_min, grn_cfg.k_max, (d, d)) * a
    activating = rng.random((d, d)) < grn_cfg.p_activation
    roots = (a.sum(axis=0) == 0) & (np.arange(d) < n)
    c = grn_cfg.n_cell_types
    basal = rng.uniform(grn_cfg.basal_min, grn_cfg.basal_max, (c, d)) * roots[None, :]
    cell_type = rng.integers(0, c, n_cells)
    return {
        "k_pos": np.where(activating, strength, 0.0),
        "k_neg": np.where(activating, 0.0, strength),
        "basal": basal,
        "cell_type": cell_type,
    }


def _hill(x: np.ndarray, h: np.ndarray, n: float) -> np.ndarray:
    xn = np.power(x, n)
    return xn / (np.power(h, n) + xn)


def steady_state_means(grn_cfg, params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Layer-wise deterministic steady state: ``xbar: (T, C, d)`` and half responses ``h: (T, d)``.

    Canonical order (parents have smaller index) lets one pass over the nodes suffice.
    """
    k_pos, k_neg, basal = params["k_pos"], params["k_neg"], params["basal"]
    t, c, d = basal.shape
    xbar = np.zeros((t, c, d))
    h = np.ones((t, d))
    for j in range(d):
        hill = _hill(xbar, h[:, None, :], grn_cfg.hill)  # (T, C, d); only parents < j matter
        prod = basal[:, :, j] + (hill * k_pos[:, None, :, j]).sum(-1) + ((1 - hill) * k_neg[:, None, :, j]).sum(-1)
        xbar[:, :, j] = prod / grn_cfg.decay
        h[:, j] = np.maximum(xbar[:, :, j].mean(axis=1), 1e-8)
    return xbar, h


def simulate(
    grn_cfg,
    params: dict[str, np.ndarray],
    prod_scale: np.ndarray,
    rngs: list[np.random.Generator],
) -> np.ndarray:
    """Euler-Maruyama of the CLE for all cells of all tasks at once.

    ``prod_scale: (T, M, d)`` multiplies production per cell (1 observational, 0 knockout,
    soft_scale knockdown); ``params["cell_type"]: (T, M)``. Returns expression ``(T, M, d)``
    (before technical noise). The two independent Wiener terms of a step are merged into
    one Gaussian of the same law, ``sqrt(P + lambda x) dW``. Each task's increments come
    from its own generator, one ``(M, d)`` draw per step, so tasks stay independent of the batch they are in.
    """
    xbar, h = steady_state_means(grn_cfg, params)
    t_count, m, d = prod_scale.shape
    rows = np.arange(t_count)[:, None]
    cell_type = params["cell_type"]
    basal = params["basal"][rows, cell_type]  # (T, M, d)
    x = xbar[rows, cell_type] * (prod_scale > 0)  # knocked-out genes start (and stay) at 0
    k_diff = params["k_pos"] - params["k_neg"]  # (T, d, d)
    k_sum = params["k_neg"].sum(axis=1)  # (T, d): sum_i |K_ij| over repressors, the "1 -" part
    lam, q, dt = grn_cfg.decay, grn_cfg.noise_q, grn_cfg.dt
    sqrt_dt = np.sqrt(dt)
    h_n = np.power(h, grn_cfg.hill)[:, None, :]
    for _ in range(grn_cfg.n_steps):
        xn = np.power(x, grn_cfg.hill)
        hill = xn / (h_n + xn)
        # sum_i K+_ij H_i + K-_ij (1 - H_i) = H @ K+ - H @ K- + sum_i K-_ij
        prod = hill @ k_diff
        prod += basal
        prod += k_sum[:, None, :]
        prod *= prod_scale
        np.maximum(prod, 0.0, out=prod)  # round-off guard for sqrt
        z = np.stack([g.standard_normal((m, d)) for g in rngs])  # (T, M, d)
        # sqrt(P) dW1 + sqrt(lambda x) dW2 has the law of sqrt(P + lambda x) dW: one draw
        x = x + (prod - lam * x) * dt + (q * sqrt_dt) * np.sqrt(prod + lam * x) * z
        np.maximum(x, 0.0, out=x)
    return x


def technical_noise(
    grn_cfg, x: np.ndarray, node_mask: np.ndarray, rngs: list[np.random.Generator]
) -> np.ndarray:
    """Outlier genes, library size, dropout and Poisson counts, per task; ``x: (T, M, d)``."""
    out = np.empty_like(x)
    for t, g in enumerate(rngs):
        xt = x[t]
        d = xt.shape[1]
        outlier = g.random(d) < grn_cfg.outlier_prob
        factor = np.where(outlier, g.lognormal(grn_cfg.outlier_mean, grn_cfg.outlier_sigma, d), 1.0)
        lib = g.lognormal(0.0, grn_cfg.library_size_sigma, (xt.shape[0], 1))
        xt = xt * factor[None, :] * lib
        logx = np.log1p(xt)
        real = node_mask[t]
        q = np.percentile(logx[:, real], grn_cfg.dropout_percentile) if real.any() else 0.0
        keep = g.random(xt.shape) < 1.0 / (1.0 + np.exp(-grn_cfg.dropout_shape * (logx - q)))
        out[t] = g.poisson(xt * keep).astype(np.float64)
    return out
