"""The exact Bayesian posterior over linear-Gaussian causal models (BGe), by DAG enumeration.

Two classes:

* :class:`BGeMixturePosterior` — any weighted set of DAGs ``G_1..G_P`` with the BGe
  (Normal-Wishart) parameter posterior inside each graph. Used by DiBS-marginal (its
  particles) and as the base of the exact posterior.
* :class:`ExactPosterior` — the special case over *all* DAGs on the d <= 5 real nodes with
  weights ``p(G | D) ∝ p(G) p(D | G)``, ``p(D | G)`` the BGe marginal likelihood
  (observational rows plus known-target interventional rows, see :mod:`.bge`) and
  ``p(G) ∝ exp(-edge_penalty |E(G)|)`` (uniform when ``edge_penalty = 0``), or, with
  ``graph_prior="random_order_er"``, the law of the prior sampler's Erdos-Renyi graphs (a
  uniformly random node order, then each forward pair an edge with probability ``edge_prob``):
  ``p(G) ∝ L(G) edge_prob^|E| (1 - edge_prob)^(d(d-1)/2 - |E|)`` with ``L(G)`` the number of
  node orders consistent with G (linear extensions). Under that prior and BGe-conjugate
  parameters the exact posterior is Bayes-optimal for data of the ``bge`` mechanism.

Interventional densities. For do(X_j = a) and outcome X_i,

    p(x_i | do(X_j = a), D) = sum_G p(G | D) p(x_i | do(X_j = a), G, D),

and inside a graph the parameters have the conjugate posterior of :mod:`.bge` (node v:
``sigma_v^2 ~ InvGamma(a_n, b_n)``, ``b_v | sigma_v^2 ~ N(bhat, sigma_v^2 R_PP^{-1})``,
``c_v | b_v, sigma_v^2 ~ N(nu'_v - b_v^T nu'_P, sigma_v^2 / alpha_mu')``, independent over v).
Per graph one of three cases applies:

1. ``pa(i) = {j}``: the Student-t regression predictive of x_i at ``x_j = a`` (closed form).
2. j is not an ancestor of i and ``pa(i)`` is empty — or, for purely observational data,
   i's ancestral set ``An(i) u {i}`` induces a complete DAG: the intervention does not
   touch X_i and the predictive is the BGe marginal Student-t of x_i (closed form). For a
   complete ancestral DAG the per-node posteriors recompose the Normal-Wishart posterior
   on ``An(i) u {i}``, whose x_i-marginal is that same t; with interventional rows nodes
   use different rows, so there only the empty-parent case is used.
3. otherwise Monte Carlo: parameter draws from the posterior (``n_mc`` for a graph
   holding all the Monte Carlo mass, at least 2 per component, in proportion to the
   weights otherwise; see ``_mc_components``); given parameters the
   linear-Gaussian SCM under the intervention makes X_i exactly Gaussian,
   ``x_i = sum_u y_u (c_u + eps_u)`` with ``y = (I - W_do)^{-1} e_i`` (``W_do`` has node
   j's incoming column removed, ``c_j = a``, ``sigma_j = 0``), so

       p_hat(x_i) = (1/S) sum_s N(x_i; y_s^T c_s, sum_u y_{s,u}^2 sigma_{s,u}^2),

   with the delta-method standard error ``sd_s(N) / (sqrt(S) p_hat)`` (summed over
   components with weights ``w_k^2``). The draws are fixed
   per query ``(seed, j, i)``, so the estimate is a proper density in x (a Gaussian mixture)
   and is smooth in ``a``.

Graphs whose normalised weight is below ``prune`` (1e-12) are dropped from density
evaluation and sampling and the rest renormalised (their mass is < P * 1e-12). Graphs that
share the families of every node that can influence X_i under the intervention share one
Monte Carlo component (their densities are identical), which makes the sum over all
29,281 DAGs at d = 5 cheap.

Padded nodes (``node_mask`` False) take no part: they must be isolated in every graph,
cannot be queried, and are returned as 0 by :meth:`sample_interventional`.
"""
from __future__ import annotations

import numpy as np

from pipeline_lib.baselines.base import DensityEstimate, GraphMixturePosterior, check_query, stack_known_interventions
from pipeline_lib.baselines.bge import BGe, BGeError, student_t_logpdf
from pipeline_lib.baselines.enumeration import (
    MAX_ENUMERATION_NODES,
    EnumerationError,
    enumerate_dags,
    markov_equivalent,
    parent_bitmasks,
    reachability,
)

_CHUNK_ELEMENTS = 2_000_000  # floats per temporary array in the Monte Carlo sums


def _node_mask(node_mask, d: int) -> np.ndarray:
    if node_mask is None:
        return np.ones(d, bool)
    node_mask = np.asarray(node_mask, dtype=bool)
    if node_mask.shape != (d,):
        raise BGeError(f"node_mask must have shape ({d},), got {node_mask.shape}")
    if not node_mask.any():
        raise BGeError("node_mask: no real nodes")
    return node_mask


class BGeMixturePosterior(GraphMixturePosterior):
    """Mixture over arbitrary DAGs with the BGe parameter posterior in each (module docstring).

    ``x: (N, d)`` all rows used for the parameter posterior, ``graphs: (P, d, d)``,
    ``log_weights: (P,)`` unnormalised, ``interv_mask: (N, d)`` bool (True where the node
    was intervened in that row; the node's mechanism ignores that row), ``node_mask: (d,)``.
    ``n_mc`` parameter draws per Monte Carlo component, ``seed`` fixes them per query.
    """

    def __init__(self, x: np.ndarray, graphs: np.ndarray, log_weights: np.ndarray, *,
                 interv_mask: np.ndarray | None = None, node_mask: np.ndarray | None = None,
                 bge: BGe | None = None, n_mc: int = 256, seed: int = 0, prune: float = 1e-12):
        super().__init__(graphs, log_weights)
        d = self.n_nodes
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != d:
            raise BGeError(f"x must have shape (N, {d}) to match graphs, got {x.shape}")
        self.node_mask = _node_mask(node_mask, d)
        real = np.flatnonzero(self.node_mask)
        pad = ~self.node_mask
        if (self.graphs[:, pad, :].any() or self.graphs[:, :, pad].any()):
            raise BGeError("graphs: padded nodes (node_mask False) must have no edges")
        g_r = self.graphs[:, real][:, :, real]
        reach = reachability(g_r)
        if np.diagonal(reach, axis1=1, axis2=2).any():
            raise BGeError("graphs: every mixture component must be acyclic")
        if interv_mask is not None:
            interv_mask = np.asarray(interv_mask, dtype=bool)
            if interv_mask.shape != x.shape:
                raise BGeError(f"interv_mask must have shape {x.shape}, got {interv_mask.shape}")
            interv_mask = interv_mask[:, real]
            if not interv_mask.any():
                interv_mask = None
        self.bge = bge if bge is not None else BGe()
        self.scorer = self.bge.scorer(x[:, real], interv_mask)
        self.observational = interv_mask is None
        self.n_mc, self.seed, self.prune = int(n_mc), int(seed), float(prune)
        self._real = real
        self._pos = np.full(d, -1)
        self._pos[real] = np.arange(len(real))
        self._g = g_r
        self._reach = reach
        self._masks = parent_bitmasks(g_r)  # (P, dr)
        self._build_family_table()

    # ------------------------------------------------------------------ tables
    def _build_family_table(self) -> None:
        """Posterior of every distinct (node, parent set) in the mixture, stacked (U, ...)."""
        dr = len(self._real)
        fam = np.zeros_like(self._masks)
        posts = []
        for v in range(dr):
            uniq, inv = np.unique(self._masks[:, v], return_inverse=True)
            fam[:, v] = len(posts) + inv
            posts += [self.scorer.family_posterior(v, int(m)) for m in uniq]
        self._fam = fam
        self._tab_beta = np.stack([p.beta for p in posts])
        self._tab_chol = np.stack([p.chol for p in posts])
        self._tab_prec_inv = np.stack([p.prec_inv for p in posts])
        self._tab_an = np.array([p.a_n for p in posts])
        self._tab_bn = np.array([p.b_n for p in posts])
        self._tab_nu = np.stack([p.nu for p in posts])
        self._tab_amu = np.array([p.alpha_mu_post for p in posts])
        self._tab_node = np.array([p.node for p in posts])

    def _real_index(self, v: int, name: str) -> int:
        r = int(self._pos[int(v)])
        if r < 0:
            raise BGeError(f"{name}={v} is a padded node (node_mask False)")
        return r

    def _active(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices and renormalised weights of the graphs above the pruning threshold."""
        w = self.weights
        keep = np.flatnonzero(w >= self.prune)
        return keep, w[keep] / w[keep].sum()

    # --------------------------------------------------------- parameter draws
    def _draw_parameters(self, fam: np.ndarray, rng: np.random.Generator, size: int):
        """Posterior parameter draws for rows of family indices ``fam: (K, dr)`` (-1 = unused
        node, parameters zero) -> ``W (K, size, dr, dr)``, ``c (K, size, dr)``, ``s2 (K, size, dr)``."""
        K, dr = fam.shape
        W = np.zeros((K, size, dr, dr))
        c = np.zeros((K, size, dr))
        s2 = np.zeros((K, size, dr))
        for v in range(dr):
            f = fam[:, v]
            used = f >= 0
            if not used.any():
                continue
            fu = f[used]
            a_n, b_n = self._tab_an[fu], self._tab_bn[fu]
            sig2 = b_n[:, None] / rng.gamma(a_n[:, None], size=(len(fu), size))  # (k, S)
            sig = np.sqrt(sig2)
            z = rng.standard_normal((len(fu), size, dr))
            b = self._tab_beta[fu][:, None, :] + sig[..., None] * np.einsum("kde,kse->ksd", self._tab_chol[fu], z)
            nu = self._tab_nu[fu]  # (k, dr)
            cv = (nu[np.arange(len(fu)), v][:, None] - np.einsum("ksd,kd->ks", b, nu)
                  + sig / np.sqrt(self._tab_amu[fu])[:, None] * rng.standard_normal((len(fu), size)))
            W[used, :, :, v] = b
            c[used, :, v] = cv
            s2[used, :, v] = sig2
        return W, c, s2

    # ------------------------------------------------------ interventional queries
    def _closed_form_t(self, fid: int, dz: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Student-t predictive of family ``fid``'s node at parent offsets ``dz = z - nu'`` (dr,)."""
        a_n, b_n, amu = self._tab_an[fid], self._tab_bn[fid], self._tab_amu[fid]
        v = self._tab_node[fid]
        loc = self._tab_nu[fid, v] + self._tab_beta[fid] @ dz
        q = dz @ self._tab_prec_inv[fid] @ dz
        scale2 = (b_n / a_n) * (1 + 1 / amu + q)
        return student_t_logpdf(x, 2 * a_n, loc, scale2)

    def interventional_log_density(self, j: int, a: float, i: int, x: np.ndarray) -> DensityEstimate:
        check_query(j, i, self.n_nodes)
        jr, ir = self._real_index(j, "intervened node j"), self._real_index(i, "outcome node i")
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        a = float(a)
        dr = len(self._real)
        keep, w = self._active()
        masks_i = self._masks[keep, ir]
        j_anc = self._reach[keep, jr, ir]
        case_reg = masks_i == (1 << jr)
        if self.observational:
            anc = self._reach[keep, :, ir].copy()
            anc[:, ir] = True
            n_anc = anc.sum(axis=1)
            inner = np.einsum("gu,guv,gv->g", anc, self._g[keep].astype(np.int64), anc)
            case_marg = ~j_anc & (inner == n_anc * (n_anc - 1) // 2)
        else:
            case_marg = ~j_anc & (masks_i == 0)
        case_mc = ~(case_reg | case_marg)

        log_terms, var_terms = [], np.zeros(len(x))
        if case_reg.any():
            fid = self._fam[keep[case_reg][0], ir]
            dz = np.zeros(dr)
            dz[jr] = a - self._tab_nu[fid, jr]
            log_terms.append(np.log(w[case_reg].sum()) + self._closed_form_t(fid, dz, x))
        if case_marg.any():
            fid0 = self.scorer.family_posterior(ir, 0)
            scale2 = (fid0.b_n / fid0.a_n) * (1 + 1 / fid0.alpha_mu_post)
            log_terms.append(np.log(w[case_marg].sum())
                             + student_t_logpdf(x, 2 * fid0.a_n, fid0.nu[ir], scale2))
        mc_log, mc_scaled_var = self._mc_components(keep[case_mc], w[case_mc], jr, a, ir, x)
        if mc_log is not None:
            log_terms.append(mc_log)
        log_p = np.logaddexp.reduce(np.stack(log_terms), axis=0)
        if mc_log is not None:
            var_terms = mc_scaled_var(log_p)
        return DensityEstimate(log_density=log_p, mc_stderr=np.sqrt(var_terms))

    def _mc_components(self, graphs: np.ndarray, w: np.ndarray, jr: int, a: float, ir: int, x: np.ndarray):
        """Monte Carlo part of the mixture over ``graphs`` with weights ``w``.

        Components (distinct relevant-family keys) get ``n_k = clip(ceil(S w_k / sum w), 2, S)``
        parameter draws (``S = n_mc``), so a dominant graph gets S draws and the cost stays
        ~S + 2K when the mass is spread over K components. The estimate
        ``sum_k w_k (1/n_k) sum_s N_ks(x)`` is unbiased and a proper Gaussian mixture in x.
        Returns its log (m,) and a function of the total log density giving the
        delta-method variance ``sum_k w_k^2 var_s(N_ks) / (n_k p_total^2)``; per-component
        moments of N are kept in log space so no (draws, m) array outlives its chunk.
        """
        if len(graphs) == 0:
            return None, None
        dr = len(self._real)
        g_mut = self._g[graphs].copy()
        g_mut[:, :, jr] = 0
        relevant = reachability(g_mut)[:, :, ir]
        relevant[:, ir] = True
        relevant[:, jr] = False
        keys = np.where(relevant, self._fam[graphs], -1)
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        wk = np.bincount(inv.reshape(-1), weights=w, minlength=len(uniq))
        S, m = self.n_mc, len(x)
        nk = np.clip(np.ceil(S * wk / wk.sum()), 2, max(S, 2)).astype(np.int64)
        rng = np.random.default_rng([self.seed, jr, ir, 0x5EED])
        e_i = np.zeros(dr)
        e_i[ir] = 1.0
        log_m1 = np.empty((len(uniq), m))  # log mean_s N_ks
        log_m2 = np.empty((len(uniq), m))  # log mean_s N_ks^2
        per_draw = max(m, dr * dr)
        cum = np.cumsum(nk)
        lo = 0
        while lo < len(uniq):
            base = cum[lo - 1] if lo else 0
            hi = max(lo + 1, int(np.searchsorted(cum, base + _CHUNK_ELEMENTS // per_draw, side="right")))
            reps = nk[lo:hi]
            fam = np.repeat(uniq[lo:hi], reps, axis=0)  # (D, dr), one row per draw
            W, c, s2 = self._draw_parameters(fam, rng, 1)
            W, c, s2 = W[:, 0], c[:, 0], s2[:, 0]
            W[..., jr] = 0.0
            c[:, jr] = a
            s2[:, jr] = 0.0
            y = np.broadcast_to(e_i, c.shape).copy()
            for _ in range(dr - 1):  # y = sum_k W^k e_i, exact since W is nilpotent
                y = e_i + np.einsum("duv,dv->du", W, y)
            mean = np.einsum("du,du->d", y, c)
            var = np.einsum("du,du->d", y * y, s2)
            log_n = -0.5 * (x[None, :] - mean[:, None]) ** 2 / var[:, None] - 0.5 * np.log(2 * np.pi * var)[:, None]
            starts = np.concatenate([[0], np.cumsum(reps)[:-1]])
            log_m1[lo:hi] = np.logaddexp.reduceat(log_n, starts, axis=0) - np.log(reps)[:, None]
            log_m2[lo:hi] = np.logaddexp.reduceat(2 * log_n, starts, axis=0) - np.log(reps)[:, None]
            lo = hi
        mc_log = np.logaddexp.reduce(np.log(wk)[:, None] + log_m1, axis=0)

        def scaled_var(log_p: np.ndarray) -> np.ndarray:
            # unbiased var_s(N / p) = n/(n-1) (mean(N^2) - mean(N)^2) / p^2
            v = np.exp(log_m2 - 2 * log_p) - np.exp(2 * (log_m1 - log_p))
            v = np.clip(v, 0.0, None) * (nk / (nk - 1))[:, None]
            return np.einsum("k,km->m", wk**2 / nk, v)

        return mc_log, scaled_var

    def sample_interventional(self, j: int, a: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """n joint samples (n, d) from p(x | do(X_j = a), D): a graph from the mixture, one
        posterior parameter draw, then the linear SCM under the intervention."""
        if not 0 <= int(j) < self.n_nodes:
            raise BGeError(f"intervened node j={j} is out of range for {self.n_nodes} nodes")
        jr = self._real_index(j, "intervened node j")
        dr = len(self._real)
        keep, w = self._active()
        comp = keep[rng.choice(len(keep), size=int(n), p=w)]
        out = np.zeros((int(n), self.n_nodes))
        step = max(1, _CHUNK_ELEMENTS // (dr * dr))
        for lo in range(0, int(n), step):
            fam = self._fam[comp[lo:lo + step]]
            W, c, s2 = self._draw_parameters(fam, rng, 1)
            W, c, s = W[:, 0], c[:, 0], np.sqrt(s2[:, 0])
            W[..., jr] = 0.0
            eps = s * rng.standard_normal(c.shape)
            xs = c + eps
            xs[:, jr] = a
            for _ in range(dr):  # fixed-point sweeps reach the ancestral sample on a DAG
                xs = c + np.einsum("nu,nuv->nv", xs, W) + eps
                xs[:, jr] = a
            out[lo:lo + step, self._real] = xs
        return out


def linear_extensions(dags: np.ndarray) -> np.ndarray:
    """Number of node orders consistent with each DAG, ``(n_dags, d, d) -> (n_dags,)``.

    Vectorised over DAGs; a loop over the d! <= 120 orders (d <= 5).
    """
    import itertools

    d = dags.shape[1]
    counts = np.zeros(len(dags), dtype=np.int64)
    for order in itertools.permutations(range(d)):
        rank = np.empty(d, dtype=int)
        rank[list(order)] = np.arange(d)
        backward = rank[:, None] >= rank[None, :]  # i -> j goes backward in this order
        counts += ~(dags.astype(bool) & backward).any(axis=(1, 2))
    return counts


class ExactPosterior(BGeMixturePosterior):
    """p(G | D) over all DAGs of the real nodes (d <= 5), BGe likelihood; see module docstring.

    Attributes after :meth:`fit`: ``log_likelihoods (n_dags,)`` BGe ``log p(D | G)``,
    ``log_prior (n_dags,)`` normalised graph prior, ``log_marginal_likelihood`` =
    ``log sum_G p(G) p(D | G)``.
    """

    log_likelihoods: np.ndarray
    log_prior: np.ndarray
    log_marginal_likelihood: float

    @classmethod
    def fit(cls, x_obs: np.ndarray, *, x_int: np.ndarray | None = None, int_targets: np.ndarray | None = None,
            node_mask: np.ndarray | None = None, edge_penalty: float = 0.0, bge: BGe | None = None,
            n_mc: int = 256, seed: int = 0, graph_prior: str = "uniform",
            edge_prob: float = 0.5) -> "ExactPosterior":
        """Exact posterior from ``x_obs (N, d)`` and optional known-target interventional
        data ``x_int (K, n_int, d)`` with ``int_targets (K, d)`` bool."""
        x_obs = np.asarray(x_obs, dtype=np.float64)
        if x_obs.ndim != 2:
            raise BGeError(f"x_obs must have shape (N, d), got {x_obs.shape}")
        d = x_obs.shape[1]
        nm = _node_mask(node_mask, d)
        dr = int(nm.sum())
        if dr > MAX_ENUMERATION_NODES:
            raise EnumerationError(
                f"x_obs has {dr} real nodes; exact enumeration supports at most {MAX_ENUMERATION_NODES}"
            )
        if not edge_penalty >= 0:
            raise BGeError(f"edge_penalty must be >= 0, got {edge_penalty}")
        x, mask = stack_known_interventions(x_obs, x_int, int_targets, BGeError)
        bge = bge if bge is not None else BGe()
        real = np.flatnonzero(nm)
        dags_r = enumerate_dags(dr)
        scorer = bge.scorer(x[:, real], None if mask is None or not mask[:, real].any() else mask[:, real])
        table = scorer.local_score_table()  # (dr, 2^dr)
        loglik = table[np.arange(dr)[None, :], parent_bitmasks(dags_r)].sum(axis=1)
        n_edges = dags_r.reshape(len(dags_r), -1).sum(axis=1)
        if graph_prior == "uniform":
            log_prior = -float(edge_penalty) * n_edges
        elif graph_prior == "random_order_er":
            if not 0.0 < edge_prob < 1.0:
                raise BGeError(f"edge_prob must lie in (0, 1), got {edge_prob}")
            n_pairs = dr * (dr - 1) // 2
            log_prior = (np.log(linear_extensions(dags_r)) + n_edges * np.log(edge_prob)
                         + (n_pairs - n_edges) * np.log1p(-edge_prob))
        else:
            raise BGeError(f"graph_prior must be 'uniform' or 'random_order_er', got {graph_prior!r}")
        log_prior = log_prior - np.logaddexp.reduce(log_prior)
        log_post = loglik + log_prior
        graphs = np.zeros((len(dags_r), d, d), np.uint8)
        graphs[:, real[:, None], real[None, :]] = dags_r
        post = cls(x, graphs, log_post, interv_mask=mask, node_mask=nm, bge=bge, n_mc=n_mc, seed=seed)
        post.log_likelihoods = loglik
        post.log_prior = log_prior
        post.log_marginal_likelihood = float(np.logaddexp.reduce(log_post))
        return post

    def map_graph(self) -> np.ndarray:
        """The maximum a posteriori DAG, (d, d) uint8."""
        return self.graphs[int(np.argmax(self.log_weights))].copy()

    def mec_probability(self, true_adj: np.ndarray) -> float:
        """Posterior mass on the Markov equivalence class of ``true_adj (d, d)``."""
        true_adj = np.asarray(true_adj)
        if true_adj.shape != (self.n_nodes, self.n_nodes):
            raise BGeError(f"true_adj must have shape ({self.n_nodes}, {self.n_nodes}), got {true_adj.shape}")
        same = markov_equivalent(self.graphs, true_adj)
        return float(self.weights[same].sum())
