"""The two-node linear-Gaussian posterior in closed form (the MACE-TNP reference case).

Graphs ``{empty, 0 -> 1, 1 -> 0}`` (index order). With the BGe prior of :mod:`.bge`
(d = 2, ``alpha_w``, ``t = alpha_mu (alpha_w - 3) / (alpha_mu + 1)``) and the posterior
scatter ``R = t I + S_N + (N alpha_mu / (N + alpha_mu)) (nu - xbar)(nu - xbar)^T``, the
family log marginals are scalar expressions (``k = alpha_w - 2 + l`` prior degrees of
freedom for a family of l variables):

    f_i  = -(N/2) log pi + (1/2) log(alpha_mu / (N + alpha_mu)) + log Gamma((N + k_1)/2)
           - log Gamma(k_1/2) + (k_1/2) log t - ((N + k_1)/2) log R_ii,           k_1 = alpha_w - 1
    f_01 = -N log pi + log(alpha_mu / (N + alpha_mu)) + log Gamma_2((N + k_2)/2)
           - log Gamma_2(k_2/2) + k_2 log t - ((N + k_2)/2) log(R_00 R_11 - R_01^2),  k_2 = alpha_w

    log p(D | empty) = f_0 + f_1,   log p(D | 0 -> 1) = log p(D | 1 -> 0) = f_01,

and ``p(G | D) ∝ p(G) p(D | G)``. The interventional predictive of X_i under do(X_j = a)
is a mixture of two Student-t's (``nu' = (alpha_mu nu + N xbar) / (alpha_mu + N)``,
``alpha_mu' = alpha_mu + N``):

* G = j -> i: ``N + alpha_w`` degrees of freedom, location ``nu'_i + (R_ij / R_jj)(a - nu'_j)``,
  squared scale ``(R_ii - R_ij^2 / R_jj) / (N + alpha_w) * (1 + 1/alpha_mu' + (a - nu'_j)^2 / R_jj)``;
* G = i -> j or empty: X_i is untouched by the intervention; ``N + alpha_w - 1`` degrees of
  freedom, location ``nu'_i``, squared scale ``R_ii / (N + alpha_w - 1) * (1 + 1/alpha_mu')``;

    p(x_i | do(X_j = a), D) = p(j -> i | D) t_reg(x_i) + (1 - p(j -> i | D)) t_marg(x_i).

Written out separately from :mod:`.exact` on purpose: the two must agree to 1e-8.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.special import gammaln, multigammaln

from pipeline_lib.baselines.base import DensityEstimate, GraphMixturePosterior, check_query
from pipeline_lib.baselines.bge import BGe, BGeError, student_t_logpdf

TWO_NODE_GRAPHS = np.array([[[0, 0], [0, 0]], [[0, 1], [0, 0]], [[0, 0], [1, 0]]], dtype=np.uint8)


class TwoNodePosterior(GraphMixturePosterior):
    """Closed-form BGe posterior over the three DAGs on two nodes (module docstring)."""

    def __init__(self, log_weights: np.ndarray, R: np.ndarray, nu_post: np.ndarray, n: int,
                 alpha_mu: float, alpha_w: float):
        super().__init__(TWO_NODE_GRAPHS, log_weights)
        self.R, self.nu_post, self.n = R, nu_post, int(n)
        self.alpha_mu_post = alpha_mu + n
        self.df_reg, self.df_marg = n + alpha_w, n + alpha_w - 1

    @classmethod
    def fit(cls, x_obs: np.ndarray, *, bge: BGe | None = None, edge_penalty: float = 0.0) -> "TwoNodePosterior":
        """Posterior from ``x_obs (N, 2)``; graph prior ``∝ exp(-edge_penalty |E|)``."""
        x = np.asarray(x_obs, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != 2:
            raise BGeError(f"x_obs must have shape (N, 2), got {x.shape}")
        if not np.isfinite(x).all():
            raise BGeError("x_obs contains NaN or inf")
        bge = bge if bge is not None else BGe()
        am, aw = bge.alpha_mu, bge.alpha_w_for(2)
        t = am * (aw - 3) / (am + 1)
        n = x.shape[0]
        nu0 = np.full(2, bge.mean_prior)
        xbar = x.mean(axis=0) if n else np.zeros(2)
        xc = x - xbar
        diff = nu0 - xbar
        R = t * np.eye(2) + xc.T @ xc + (n * am / (n + am)) * np.outer(diff, diff)
        nu_post = (am * nu0 + n * xbar) / (am + n)

        k1, k2 = aw - 1, aw
        f = [(-(n / 2) * np.log(np.pi) + 0.5 * np.log(am / (n + am)) + gammaln((n + k1) / 2)
              - gammaln(k1 / 2) + (k1 / 2) * np.log(t) - ((n + k1) / 2) * np.log(R[i, i])) for i in (0, 1)]
        f01 = (-n * np.log(np.pi) + np.log(am / (n + am)) + multigammaln((n + k2) / 2, 2)
               - multigammaln(k2 / 2, 2) + k2 * np.log(t)
               - ((n + k2) / 2) * np.log(R[0, 0] * R[1, 1] - R[0, 1] ** 2))
        loglik = np.array([f[0] + f[1], f01, f01])
        log_prior = -float(edge_penalty) * np.array([0.0, 1.0, 1.0])
        post = cls(loglik + log_prior, R, nu_post, n, am, aw)
        post.log_likelihoods = loglik
        return post

    def _components(self, j: int, a: float, i: int) -> tuple[float, tuple, tuple]:
        """p(j -> i | D) and (df, loc, scale2) of the regression and the marginal Student-t."""
        R, nu, amp = self.R, self.nu_post, self.alpha_mu_post
        da = a - nu[j]
        reg = (self.df_reg, nu[i] + R[i, j] / R[j, j] * da,
               (R[i, i] - R[i, j] ** 2 / R[j, j]) / self.df_reg * (1 + 1 / amp + da**2 / R[j, j]))
        marg = (self.df_marg, nu[i], R[i, i] / self.df_marg * (1 + 1 / amp))
        w_reg = self.weights[1] if (j, i) == (0, 1) else self.weights[2]
        return float(w_reg), reg, marg

    def interventional_log_density(self, j: int, a: float, i: int, x: np.ndarray) -> DensityEstimate:
        check_query(j, i, 2)
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        w_reg, reg, marg = self._components(int(j), float(a), int(i))
        with np.errstate(divide="ignore"):
            terms = np.stack([np.log(w_reg) + student_t_logpdf(x, *reg),
                              np.log1p(-w_reg) + student_t_logpdf(x, *marg)])
        return DensityEstimate(log_density=np.logaddexp.reduce(terms, axis=0), mc_stderr=np.zeros_like(x))

    def sample_interventional(self, j: int, a: float, n: int, rng: np.random.Generator) -> np.ndarray:
        if not 0 <= int(j) < 2:
            raise BGeError(f"intervened node j={j} is out of range for 2 nodes")
        j = int(j)
        i = 1 - j
        w_reg, reg, marg = self._components(j, float(a), i)
        use_reg = rng.random(n) < w_reg
        df, loc, scale2 = (np.where(use_reg, r, m) for r, m in zip(reg, marg))
        out = np.empty((n, 2))
        out[:, j] = a
        out[:, i] = loc + np.sqrt(scale2) * rng.standard_t(df)
        return out

    def kl_to(self, log_q_fn: Callable[[np.ndarray], np.ndarray], j: int, a: float, i: int,
              n_samples: int, rng: np.random.Generator) -> tuple[float, float]:
        """Monte Carlo ``KL(p || q) = E_p[log p(x_i) - log q(x_i)]`` for the query
        do(X_j = a), outcome X_i, where ``log_q_fn(x (m,)) -> (m,)``; returns (estimate, s.e.)."""
        check_query(j, i, 2)
        xs = self.sample_interventional(j, a, n_samples, rng)[:, i]
        diff = self.interventional_log_density(j, a, i, xs).log_density - np.asarray(log_q_fn(xs))
        return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(n_samples))
