"""The BGe score: the marginal likelihood of a linear-Gaussian DAG under a Normal-Wishart prior.

Model (Geiger & Heckerman 1994, 2002; with the correction of Kuipers, Moffa & Heckerman
2014, "Addendum on the scoring of Gaussian directed acyclic graphical models"). For d
variables ``x ~ N(mu, W^{-1})`` with the Normal-Wishart prior

    W ~ Wishart_d(alpha_w, T^{-1})          (E[W] = alpha_w T^{-1}),
    mu | W ~ N(nu, (alpha_mu W)^{-1}),

hyperparameters ``alpha_mu = 1``, ``alpha_w = d + 2``, ``nu = mean_prior * 1`` and
``T = t I`` with ``t = alpha_mu (alpha_w - d - 1) / (alpha_mu + 1)`` (so that the prior
expected covariance is ``I / alpha_mu + I``, the usual choice in BiDAG and DiBS).

Given N rows with mean ``xbar`` and centred scatter ``S_N = sum_n (x_n - xbar)(x_n - xbar)^T``,
the posterior is again Normal-Wishart with

    alpha_mu' = alpha_mu + N,   alpha_w' = alpha_w + N,
    nu' = (alpha_mu nu + N xbar) / (alpha_mu + N),
    R  = T + S_N + (N alpha_mu / (N + alpha_mu)) (nu - xbar)(nu - xbar)^T       (= T').

The marginal of a subset Y (|Y| = l) is Normal-Wishart with ``alpha_w - d + l`` degrees of
freedom (Kuipers et al.), so the family marginal likelihood is

    log p(x_Y) = -(N l / 2) log pi + (l / 2) log(alpha_mu / (N + alpha_mu))
                 + log Gamma_l((N + alpha_w - d + l) / 2) - log Gamma_l((alpha_w - d + l) / 2)
                 + ((alpha_w - d + l) / 2) log det T_YY - ((N + alpha_w - d + l) / 2) log det R_YY,

and the score of a DAG G is ``sum_i [log p(x_{i u pa(i)}) - log p(x_pa(i))]``. It is score
equivalent: Markov-equivalent DAGs get the same marginal likelihood.

Known-target interventions (``interv_mask (N, d)`` bool, True where node i was set by an
intervention in row n): node i's local score uses only the rows where i was *not*
intervened (its mechanism did not generate the intervened rows; Cooper & Yoo 1999,
Eaton & Murphy 2007). Each node thus has its own ``N_i``, ``xbar_i`` and ``R_i``;
score equivalence no longer holds across interventions, which is what makes directions
identifiable.

Conjugate posterior of one node's mechanism. For node i with parents P (|P| = p) write the
family Y = P u {i}. The inverse-Wishart partition theorem applied to ``Sigma_Y = W_Y^{-1} ~
IW(nu_Y, R_YY)``, ``nu_Y = N + alpha_w - d + p + 1`` (the Schur complement
``Sigma_ii.P = 1 / W_ii`` keeps all ``nu_Y`` degrees of freedom, the block ``Sigma_PP`` loses
one per dropped variable) gives the regression ``x_i = c + b^T x_P + N(0, sigma^2)``:

    sigma^2 ~ InvGamma(a_n, b_n),         a_n = (N + alpha_w - d + p + 1) / 2,
                                          b_n = (R_ii - R_iP R_PP^{-1} R_Pi) / 2,
    b | sigma^2 ~ N(R_PP^{-1} R_Pi, sigma^2 R_PP^{-1}),
    c | b, sigma^2 ~ N(nu'_i - b^T nu'_P, sigma^2 / alpha_mu'),

and the posterior predictive of x_i at parent values z is Student-t with ``2 a_n`` degrees
of freedom, location ``nu'_i + bhat^T (z - nu'_P)`` and squared scale
``(b_n / a_n) (1 + 1 / alpha_mu' + (z - nu'_P)^T R_PP^{-1} (z - nu'_P))``.
With N = 0 these are the prior conditionals, which :func:`sample_bge_parameters` draws.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, multigammaln

from pipeline_lib.baselines.enumeration import parent_bitmasks


class BGeError(ValueError):
    """Invalid input to the BGe score (names the offending field)."""


def _bit_indices(mask: int, d: int) -> list[int]:
    return [u for u in range(d) if (mask >> u) & 1]


def _check_x(x: np.ndarray, name: str = "x") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise BGeError(f"{name} must have shape (N, d), got {x.shape}")
    if not np.isfinite(x).all():
        raise BGeError(f"{name} contains NaN or inf")
    return x


@dataclass(frozen=True)
class FamilyPosterior:
    """Conjugate posterior of node ``node``'s regression on the parents in ``mask``.

    Arrays are padded to all d nodes (zero outside the parent set) so that posteriors of
    different families stack: ``beta: (d,)`` posterior mean of b, ``chol: (d, d)`` with
    ``chol chol^T = R_PP^{-1}`` (so ``b = beta + sigma chol z``), ``prec_inv: (d, d)`` the
    padded ``R_PP^{-1}``, ``nu: (d,)`` posterior mean vector nu' of this node's rows.
    """

    node: int
    mask: int
    beta: np.ndarray
    chol: np.ndarray
    prec_inv: np.ndarray
    a_n: float
    b_n: float
    nu: np.ndarray
    alpha_mu_post: float


class BGeScorer:
    """BGe local scores and family posteriors for one dataset, with a per-(node, parents) cache.

    ``x: (N, d)``, ``interv_mask: (N, d)`` bool or None. Nodes whose row masks coincide
    share one sufficient statistic (so purely observational data computes R once).
    """

    def __init__(self, x: np.ndarray, interv_mask: np.ndarray | None, alpha_mu: float, alpha_w: float,
                 mean_prior: float):
        x = _check_x(x)
        n, d = x.shape
        if interv_mask is not None:
            interv_mask = np.asarray(interv_mask, dtype=bool)
            if interv_mask.shape != x.shape:
                raise BGeError(f"interv_mask must have the shape of x {x.shape}, got {interv_mask.shape}")
        self.d, self.alpha_mu, self.alpha_w = d, float(alpha_mu), float(alpha_w)
        self.t = self.alpha_mu * (self.alpha_w - d - 1) / (self.alpha_mu + 1)
        self.nu0 = np.full(d, float(mean_prior))
        stats: dict[bytes, tuple] = {}
        self.n_rows = np.zeros(d, np.int64)
        self.R = np.zeros((d, d, d))
        self.nu_post = np.zeros((d, d))
        for v in range(d):
            keep = np.ones(n, bool) if interv_mask is None else ~interv_mask[:, v]
            key = keep.tobytes()
            if key not in stats:
                xs = x[keep]
                nv = xs.shape[0]
                xbar = xs.mean(axis=0) if nv else np.zeros(d)
                centred = xs - xbar
                diff = self.nu0 - xbar
                R = self.t * np.eye(d) + centred.T @ centred
                R += (nv * self.alpha_mu / (nv + self.alpha_mu)) * np.outer(diff, diff)
                nu_post = (self.alpha_mu * self.nu0 + nv * xbar) / (self.alpha_mu + nv)
                stats[key] = (nv, R, nu_post)
            self.n_rows[v], self.R[v], self.nu_post[v] = stats[key]
        self._cache: list[dict[int, float]] = [dict() for _ in range(d)]

    # ---------------------------------------------------------------- scores
    def _family_logml(self, v: int, masks: np.ndarray) -> np.ndarray:
        """log p(x_Y) on node v's rows for each subset bitmask Y in ``masks`` (M,)."""
        d, aw, am = self.d, self.alpha_w, self.alpha_mu
        n = float(self.n_rows[v])
        masks = np.asarray(masks, dtype=np.int64)
        bits = ((masks[:, None] >> np.arange(d)[None, :]) & 1).astype(bool)  # (M, d)
        sizes = bits.sum(axis=1)
        out = np.zeros(len(masks))
        for l in np.unique(sizes):
            if l == 0:
                continue
            sel = np.flatnonzero(sizes == l)
            idx = np.nonzero(bits[sel])[1].reshape(len(sel), l)  # (m, l) ascending members
            sub = self.R[v][idx[:, :, None], idx[:, None, :]]
            logdet_r = np.linalg.slogdet(sub)[1]
            df = aw - d + l
            out[sel] = (
                -(n * l / 2) * np.log(np.pi)
                + (l / 2) * np.log(am / (n + am))
                + multigammaln((n + df) / 2, l) - multigammaln(df / 2, l)
                + (df / 2) * l * np.log(self.t)
                - ((n + df) / 2) * logdet_r
            )
        return out

    def local_scores(self, v: int, parent_masks: np.ndarray) -> np.ndarray:
        """log p(x_v | x_P) for each parent bitmask (M,); cached per (v, mask)."""
        parent_masks = np.asarray(parent_masks, dtype=np.int64).reshape(-1)
        if (parent_masks >> v & 1).any():
            raise BGeError(f"parent set of node {v} contains the node itself")
        uniq, inv = np.unique(parent_masks, return_inverse=True)
        cache = self._cache[v]
        missing = np.array([m for m in uniq.tolist() if m not in cache], dtype=np.int64)
        if len(missing):
            fam = self._family_logml(v, missing | (np.int64(1) << v))
            par = self._family_logml(v, missing)
            for m, s in zip(missing.tolist(), (fam - par).tolist()):
                cache[m] = s
        vals = np.array([cache[m] for m in uniq.tolist()])
        return vals[inv]

    def local_score_table(self) -> np.ndarray:
        """(d, 2^d) table of every local score; entries whose mask contains the node are -inf."""
        d = self.d
        if d > 16:
            raise BGeError(f"x: a full local-score table needs d <= 16, got d={d}")
        masks = np.arange(2**d, dtype=np.int64)
        table = np.full((d, 2**d), -np.inf)
        for v in range(d):
            ok = (masks >> v & 1) == 0
            table[v, ok] = self.local_scores(v, masks[ok])
        return table

    def log_marginal(self, adj: np.ndarray) -> np.ndarray:
        """log p(D | G) for a batch of DAGs ``adj: (B, d, d)`` -> (B,)."""
        adj = np.asarray(adj)
        if adj.ndim == 2:
            adj = adj[None]
        if adj.shape[1:] != (self.d, self.d):
            raise BGeError(f"adj must have shape (B, {self.d}, {self.d}), got {adj.shape}")
        if np.diagonal(adj, axis1=1, axis2=2).any():
            raise BGeError("adj has self-loops (non-zero diagonal)")
        masks = parent_bitmasks(adj)
        out = np.zeros(adj.shape[0])
        for v in range(self.d):
            out += self.local_scores(v, masks[:, v])
        return out

    # ------------------------------------------------------------ posteriors
    def family_posterior(self, v: int, mask: int) -> FamilyPosterior:
        """Conjugate posterior of node v's regression on the parents in ``mask`` (module doc)."""
        d = self.d
        R = self.R[v]
        par = _bit_indices(int(mask), d)
        if v in par:
            raise BGeError(f"parent set of node {v} contains the node itself")
        beta = np.zeros(d)
        chol = np.zeros((d, d))
        prec_inv = np.zeros((d, d))
        b_n = R[v, v] / 2
        if par:
            p = np.asarray(par)
            rpp = R[np.ix_(p, p)]
            rpi = R[p, v]
            L = np.linalg.cholesky(rpp)
            # chol = L^{-T}: chol chol^T = L^{-T} L^{-1} = R_PP^{-1}
            linv = np.linalg.solve(L, np.eye(len(p)))
            rinv = linv.T @ linv
            bhat = rinv @ rpi
            beta[p] = bhat
            chol[np.ix_(p, p)] = linv.T
            prec_inv[np.ix_(p, p)] = rinv
            b_n = (R[v, v] - rpi @ bhat) / 2
        return FamilyPosterior(
            node=v, mask=int(mask), beta=beta, chol=chol, prec_inv=prec_inv,
            a_n=(self.n_rows[v] + self.alpha_w - d + len(par) + 1) / 2, b_n=float(b_n),
            nu=self.nu_post[v].copy(), alpha_mu_post=self.alpha_mu + self.n_rows[v],
        )


class BGe:
    """BGe marginal likelihood with hyperparameters (alpha_mu, alpha_w, nu = mean_prior).

    ``alpha_w=None`` means ``d + 2`` for d-variable data (the smallest integer with a
    finite prior covariance). The last dataset's :class:`BGeScorer` is cached, keyed by a
    hash of ``x`` and ``interv_mask``, so repeated calls on one dataset with new graphs
    (DiBS particles) reuse the local-score cache.
    """

    def __init__(self, alpha_mu: float = 1.0, alpha_w: float | None = None, mean_prior: float = 0.0):
        if not alpha_mu > 0:
            raise BGeError(f"alpha_mu must be positive, got {alpha_mu}")
        self.alpha_mu = float(alpha_mu)
        self.alpha_w = None if alpha_w is None else float(alpha_w)
        self.mean_prior = float(mean_prior)
        self._last: tuple[bytes, BGeScorer] | None = None

    def __repr__(self) -> str:
        return f"BGe(alpha_mu={self.alpha_mu}, alpha_w={self.alpha_w}, mean_prior={self.mean_prior})"

    def alpha_w_for(self, d: int) -> float:
        aw = d + 2.0 if self.alpha_w is None else self.alpha_w
        if not aw > d + 1:
            raise BGeError(f"alpha_w must exceed d + 1 = {d + 1} for a proper prior, got {aw}")
        return aw

    def scorer(self, x: np.ndarray, interv_mask: np.ndarray | None = None) -> BGeScorer:
        x = _check_x(x)
        h = hashlib.blake2b(digest_size=16)
        h.update(str(x.shape).encode())
        h.update(np.ascontiguousarray(x).tobytes())
        if interv_mask is not None:
            h.update(np.ascontiguousarray(np.asarray(interv_mask, dtype=bool)).tobytes())
        key = h.digest()
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        sc = BGeScorer(x, interv_mask, self.alpha_mu, self.alpha_w_for(x.shape[1]), self.mean_prior)
        self._last = (key, sc)
        return sc

    def local_score(self, x: np.ndarray, node: int, parents: tuple = (), interv_mask: np.ndarray | None = None) -> float:
        """log p(x_node | x_parents) under BGe (a float)."""
        x = _check_x(x)
        d = x.shape[1]
        if not 0 <= int(node) < d:
            raise BGeError(f"node={node} is out of range for d={d}")
        mask = 0
        for u in parents:
            if not 0 <= int(u) < d or int(u) == int(node):
                raise BGeError(f"parents: {u} is not a valid parent of node {node} (d={d})")
            mask |= 1 << int(u)
        return float(self.scorer(x, interv_mask).local_scores(int(node), np.array([mask]))[0])

    def log_marginal(self, x: np.ndarray, adj: np.ndarray, interv_mask: np.ndarray | None = None) -> np.ndarray:
        """log p(x | G) for each DAG in ``adj: (B, d, d)`` (or one (d, d)) -> (B,)."""
        return self.scorer(x, interv_mask).log_marginal(adj)


def student_t_logpdf(x: np.ndarray, df: np.ndarray, loc: np.ndarray, scale2: np.ndarray) -> np.ndarray:
    """log density of a Student-t with ``df`` degrees of freedom, location and squared scale
    (broadcasting): ``log Gamma((df+1)/2) - log Gamma(df/2) - (1/2) log(df pi scale2)
    - ((df+1)/2) log(1 + (x-loc)^2 / (df scale2))``."""
    z2 = (x - loc) ** 2 / scale2
    return (gammaln((df + 1) / 2) - gammaln(df / 2) - 0.5 * np.log(df * np.pi * scale2)
            - (df + 1) / 2 * np.log1p(z2 / df))


def _wishart_bartlett(df: float, scale_chol: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws W ~ Wishart_l(df, V) with V = scale_chol scale_chol^T, (n, l, l).

    Bartlett: W = L A A^T L^T, A lower triangular, A_kk = sqrt(chi2(df - k)), A_kj ~ N(0, 1)
    for k > j (works for real df > l - 1)."""
    l = scale_chol.shape[0]
    A = np.tril(rng.standard_normal((n, l, l)), k=-1)
    diag = np.sqrt(rng.chisquare(df - np.arange(l)[None, :], size=(n, l)))
    A[:, np.arange(l), np.arange(l)] = diag
    LA = scale_chol[None] @ A
    return LA @ np.swapaxes(LA, 1, 2)


def sample_bge_parameters(adj: np.ndarray, rng: np.random.Generator, alpha_mu: float = 1.0,
                          alpha_w: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a linear-Gaussian SCM for each DAG from the Normal-Wishart prior behind BGe.

    ``adj: (T, d, d)`` -> ``weights (T, d, d)`` (``weights[t, u, v]`` = coefficient of
    parent u in node v's equation), ``intercepts (T, d)``, ``noise_std (T, d)``, so that
    ``x_v = intercepts[v] + sum_u weights[u, v] x_u + noise_std[v] * eps_v``.

    Parameter modularity: node v with parents P (|P| = p) gets its parameters from the
    Normal-Wishart marginal on its family Y = P u {v} (l = p + 1):

        W_Y ~ Wishart_l(alpha_w - d + l, T_YY^{-1}),   mu_Y | W_Y ~ N(nu_Y, (alpha_mu W_Y)^{-1}),

    (mean prior nu = 0, T = t I as in :class:`BGe`), then with ``Sigma = W_Y^{-1}``:
    ``b = Sigma_PP^{-1} Sigma_Pv``, ``sigma^2 = Sigma_vv - Sigma_vP b``,
    ``c = mu_v - b^T mu_P``. The data likelihood averaged over these draws is exactly the
    BGe marginal likelihood of the DAG (tested by Monte Carlo in tests/test_bge.py).
    Because T is a multiple of the identity the family draw depends only on l, so all
    (task, node) pairs with the same in-degree are drawn in one batch.
    """
    adj = np.asarray(adj)
    if adj.ndim != 3 or adj.shape[1] != adj.shape[2]:
        raise BGeError(f"adj must have shape (T, d, d), got {adj.shape}")
    if not alpha_mu > 0:
        raise BGeError(f"alpha_mu must be positive, got {alpha_mu}")
    n_tasks, d = adj.shape[:2]
    aw = BGe(alpha_mu, alpha_w).alpha_w_for(d)
    t = alpha_mu * (aw - d - 1) / (alpha_mu + 1)
    a = adj != 0
    weights = np.zeros((n_tasks, d, d))
    intercepts = np.zeros((n_tasks, d))
    noise_std = np.zeros((n_tasks, d))
    indeg = a.sum(axis=1)  # (T, d)
    for p in np.unique(indeg):
        tt, vv = np.nonzero(indeg == p)
        m, l = len(tt), int(p) + 1
        # family order: parents (ascending) first, the child last
        W = _wishart_bartlett(aw - d + l, np.eye(l) / np.sqrt(t), m, rng)
        Lw = np.linalg.cholesky(W)
        # Sigma = W^{-1}; mu = Sigma^{1/2}-type draw: mu = L_w^{-T} z / sqrt(alpha_mu) has cov W^{-1}/alpha_mu
        z = rng.standard_normal((m, l, 1))
        mu = np.linalg.solve(np.swapaxes(Lw, 1, 2), z)[..., 0] / np.sqrt(alpha_mu)
        sigma = np.linalg.inv(W)
        if p > 0:
            spp, spv = sigma[:, :-1, :-1], sigma[:, :-1, -1]
            b = np.linalg.solve(spp, spv[..., None])[..., 0]  # (m, p)
            var = sigma[:, -1, -1] - np.einsum("mp,mp->m", spv, b)
            c = mu[:, -1] - np.einsum("mp,mp->m", b, mu[:, :-1])
            parents = np.nonzero(a[tt, :, vv])[1].reshape(m, int(p))
            weights[tt[:, None], parents, vv[:, None]] = b
        else:
            var, c = sigma[:, 0, 0], mu[:, 0]
        intercepts[tt, vv] = c
        noise_std[tt, vv] = np.sqrt(var)
    return weights, intercepts, noise_std
