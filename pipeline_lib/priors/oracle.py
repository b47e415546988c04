"""The oracle: the true SCM of one stored task, redrawn from its seed.

Task ``index`` of ``split`` is a pure function of its seed (``sampler.split_seed``), so its
graph, mechanisms ``f``, noise law and standardisation can be redrawn exactly. The oracle
answers as every method does (:mod:`pipeline_lib.posterior`), in the stored (standardised)
units and over the task's real nodes:

* graph: the true DAG (edge probabilities 0/1);
* interventional density, the floor of NLPID for every method. With raw variables
  ``X = m + s Z`` (``Z`` the stored, standardised values) and additive noise
  ``X_i = f_i(X_pa(i)) + sigma_i u_i``, ``u_i`` of unit variance with density ``p_u``::

      p(z_i | do(Z_j = a)) = s_i E_{X_pa(i) ~ p(. | do(X_j = m_j + s_j a))}
                                 [ p_u((m_i + s_i z_i - f_i(X_pa(i))) / sigma_i) / sigma_i ]

  estimated without bias by ancestral sampling of the parents under the intervention
  (``n_mc`` draws, the last step exact), reported with its delta-method Monte Carlo error.
  The draws depend on the intervention only: all outcomes of one ``do(X_j = a)`` share them
  (one ancestral pass per intervention in :meth:`TrueSCM.log_density_batch`).
  The *log* of that estimate is biased upwards in NLPID (Jensen), by up to several nats per
  task at 2000 draws where the outcome's conditional is sharp, so the default is 20000.
  Linear (and ``bge``) mechanisms with Gaussian noise have the closed form instead: under the
  intervention ``X`` is Gaussian with mean ``(I - W_cut^T)^{-1} b'`` and variances
  ``sum_k [(I - W_cut^T)^{-1}]_{ik}^2 sigma_k^2`` (``W_cut``: the intervened node's incoming
  weights removed, ``b'_j = a``, ``sigma_j = 0``), exact with zero error;
* generator: observational / interventional samples from given noise (``noise_obs`` units:
  ``u' = sigma u / s``), exact noise abduction ``u_i = x_i - f_i(x_pa(i))`` and therefore exact
  counterfactuals.

Not available for ``mechanism.kind = "grn"`` (no additive exogenous noise).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy.special import logsumexp

from pipeline_lib.posterior import (DensityEstimate, GraphPosterior, InterventionalPredictor, SCMGenerator,
                                    check_intervention, check_query, check_rows)

from . import graphs, mechanisms, noise
from .config import PriorConfig
from .sampler import _draw_task, sample_batch, split_seed

_LOG_2PI = float(np.log(2 * np.pi))


def noise_log_density(kind: str, u: np.ndarray) -> np.ndarray:
    """log density of the unit-variance noise of ``kind`` (see :mod:`.noise`) at ``u``."""
    if kind == "gaussian":
        return -0.5 * u**2 - 0.5 * _LOG_2PI
    if kind == "laplace":
        b = 1.0 / np.sqrt(2.0)
        return -np.abs(u) / b - np.log(2 * b)
    if kind == "uniform":
        half = np.sqrt(3.0)
        return np.where(np.abs(u) <= half, -np.log(2 * half), -np.inf)
    raise ValueError(f"noise.kind={kind!r}: unknown noise kind")


class OracleError(ValueError):
    """The oracle cannot be built for this task (names the reason)."""


class TrueSCM(GraphPosterior, InterventionalPredictor, SCMGenerator):
    """The SCM behind task ``index`` of ``split`` of a prior (see module docstring).

    Nodes are the task's real nodes in label order (what :func:`pipeline_lib.taskdata.restrict`
    gives every method). ``check_x_obs``: the stored observational rows, compared with the
    redrawn ones so that a store from another sampler version is refused, not scored.
    """

    def __init__(self, config: PriorConfig, split: str, index: int, n_mc: int = 20000,
                 check_x_obs: np.ndarray | None = None, closed_form: bool = True):
        if config.mechanism.kind == "grn":
            raise OracleError("oracle: mechanism.kind='grn' has no additive exogenous noise density")
        # a SeedSequence advances when spawned: each draw gets its own, equal, sequence
        draw = _draw_task(config, split_seed(config, split, index))
        stored = sample_batch(config, [split_seed(config, split, index)])
        self.config, self.n_mc = config, int(n_mc)
        self.closed_form = bool(closed_form and config.mechanism.kind in ("linear", "bge")
                                and config.noise.kind == "gaussian")
        d = config.d_max
        n = int(draw["n"])
        labels = np.flatnonzero(stored["node_mask"][0])  # real node r has label labels[r]
        inv = graphs.inverse_permutation(draw["perm"][None])[0]  # label -> canonical position
        self._canon = inv[labels]  # (d_real,) canonical position of real node r
        self.n_nodes = len(labels)
        self._adj_c = draw["adj"][None]
        self._params = {k[5:]: np.asarray(v)[None] for k, v in draw.items() if k.startswith("mech_")}
        self._params.pop("noise_std", None)
        self._sigma_c = np.asarray(draw["scale"], dtype=np.float64) * (np.arange(d) < n)  # (d,) canonical
        self._mean = stored["obs_mean"][0, labels].astype(np.float64)  # (d_real,) raw units
        self._std = stored["obs_std"][0, labels].astype(np.float64)
        self.adjacency = stored["adjacency"][0][np.ix_(labels, labels)].astype(np.uint8)
        if check_x_obs is not None:
            ref = stored["x_obs"][0][:, labels]
            got = np.asarray(check_x_obs, dtype=np.float32)
            if got.shape != ref.shape or not np.allclose(got, ref, atol=1e-5):
                raise OracleError(f"oracle: the stored x_obs of {split}[{index}] differs from what its config "
                                  "samples (another generator version?); refusing to score against it")

    # ---------------------------------------------------------------- helpers (canonical order)
    def _ancestral(self, eps_c: np.ndarray, do: Mapping[int, float]) -> np.ndarray:
        """``eps_c: (S, d)`` raw noise, canonical; ``do``: canonical position -> raw value."""
        x = np.zeros((1,) + eps_c.shape)
        for c in range(eps_c.shape[1]):
            if c in do:
                x[0, :, c] = do[c]
            else:
                x[0, :, c] = mechanisms.evaluate(self.config.mechanism, self._params, self._adj_c, x, c)[0] + eps_c[:, c]
        return x[0]

    def _to_raw_do(self, intervention: Mapping[int, float]) -> dict[int, float]:
        mask, values = check_intervention(intervention, self.n_nodes)
        return {int(self._canon[r]): float(self._mean[r] + self._std[r] * values[r]) for r in np.flatnonzero(mask)}

    def _noise_c(self, n: int, rng: np.random.Generator | None, noise_std: np.ndarray | None) -> np.ndarray:
        """Raw canonical noise ``(n, d)``: from standardised ``noise_obs``-units, or fresh."""
        d = self.config.d_max
        eps = np.zeros((n, d))
        if noise_std is not None:
            u = np.asarray(noise_std, dtype=np.float64)
            if u.shape != (n, self.n_nodes):
                raise ValueError(f"noise: expected shape ({n}, {self.n_nodes}), got {u.shape}")
            eps[:, self._canon] = u * self._std
            return eps
        rng = rng if rng is not None else np.random.default_rng(0)
        return noise.standard_noise(self.config.noise.kind, (n, d), rng) * self._sigma_c

    def _standardise(self, x_c: np.ndarray) -> np.ndarray:
        return (x_c[:, self._canon] - self._mean) / self._std

    # ---------------------------------------------------------------- graph posterior
    def edge_probs(self) -> np.ndarray:
        return self.adjacency.astype(np.float64)

    def sample_graphs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.repeat(self.adjacency[None], n, axis=0)

    # ---------------------------------------------------------------- interventional predictor
    def _gaussian_do(self, j: int, a: float) -> tuple[np.ndarray, np.ndarray]:
        """Closed-form raw mean and variance (canonical order) under do(X_j = a), linear-Gaussian."""
        w = np.array(self._params["weights"][0], dtype=np.float64)  # w[u, v]: coefficient of x_u in x_v
        b = np.array(self._params["intercepts"][0], dtype=np.float64)
        s = self._sigma_c.copy()
        (cj, raw), = self._to_raw_do({j: a}).items()
        w[:, cj], b[cj], s[cj] = 0.0, raw, 0.0
        inv = np.linalg.inv(np.eye(len(b)) - w.T)  # x = inv (b + eps)
        return inv @ b, (inv**2) @ s**2

    def interventional_log_density(self, j: int, a: float, i: int, x: np.ndarray) -> DensityEstimate:
        check_query(j, i, self.n_nodes)
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if self.closed_form:
            mean, var = self._gaussian_do(j, a)
            ci = int(self._canon[i])
            z = (self._mean[i] + self._std[i] * x - mean[ci]) / np.sqrt(var[ci])
            lp = noise_log_density("gaussian", z) - 0.5 * np.log(var[ci]) + np.log(self._std[i])
            return DensityEstimate(log_density=lp, mc_stderr=np.zeros_like(lp))
        return self._mc_density(self._do_parents(j, a), i, x)

    def log_density_batch(self, j: np.ndarray, a: np.ndarray, i: np.ndarray, x: np.ndarray) -> DensityEstimate:
        """Q queries at once. Monte Carlo: one ancestral pass per distinct intervention ``(j, a)``,
        shared by all its outcomes (at d = 20 a task's 95 queries are 5 interventions), with the
        answers of :meth:`interventional_log_density` query by query."""
        if self.closed_form:
            return super().log_density_batch(j, a, i, x)
        x = np.asarray(x, dtype=np.float64)
        lp, se = np.empty(x.shape), np.empty(x.shape)
        groups: dict[tuple[int, float], list[int]] = {}
        for q, (jq, aq, iq) in enumerate(zip(j, a, i)):
            check_query(int(jq), int(iq), self.n_nodes)
            groups.setdefault((int(jq), float(aq)), []).append(q)
        for (jq, aq), queries in groups.items():
            parents = self._do_parents(jq, aq)
            for q in queries:
                est = self._mc_density(parents, int(i[q]), x[q])
                lp[q], se[q] = est.log_density, est.mc_stderr
        return DensityEstimate(lp, se)

    def _do_parents(self, j: int, a: float) -> np.ndarray:
        """``n_mc`` ancestral samples ``(S, d)`` (raw, canonical) under do(X_j = a); the seed
        depends on ``j`` only, so every outcome of one intervention sees the same draws."""
        rng = np.random.default_rng([int(j), 7])
        eps = noise.standard_noise(self.config.noise.kind, (self.n_mc, self.config.d_max), rng) * self._sigma_c
        return self._ancestral(eps, self._to_raw_do({j: a}))

    def _mc_density(self, xs: np.ndarray, i: int, x: np.ndarray) -> DensityEstimate:
        """The module docstring's estimate of ``log p(z_i | do)`` at ``x: (m,)`` from the parents'
        draws ``xs: (S, d)``: the outcome's own step is exact (its noise density). The ``(S, m)``
        terms are formed a few columns at a time (about 4 MB each): at S = 20000, m = 500 the
        whole matrix at once ran 10x slower, bound by memory traffic."""
        ci = int(self._canon[i])
        f = mechanisms.evaluate(self.config.mechanism, self._params, self._adj_c, xs[None], ci)[0]  # (S,)
        sigma = self._sigma_c[ci]
        raw = self._mean[i] + self._std[i] * x  # (m,) raw units
        shift = np.log(self._std[i]) - np.log(sigma)
        log_p, se = np.empty(len(x)), np.empty(len(x))
        step = max(1, (1 << 19) // self.n_mc)
        for lo in range(0, len(x), step):
            resid = (raw[None, lo:lo + step] - f[:, None]) / sigma  # (S, c)
            log_terms = noise_log_density(self.config.noise.kind, resid) + shift
            log_p[lo:lo + step] = logsumexp(log_terms, axis=0) - np.log(self.n_mc)
            with np.errstate(invalid="ignore"):
                rel = np.exp(log_terms - log_p[None, lo:lo + step])  # p_s / p_hat
                se[lo:lo + step] = np.nan_to_num(rel.std(axis=0, ddof=1) / np.sqrt(self.n_mc))
        return DensityEstimate(log_density=log_p, mc_stderr=se)

    def sample_interventional(self, j: int, a: float, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.sample_do({j: a}, n, rng)

    # ---------------------------------------------------------------- SCM generator
    def sample_observational(self, n: int, rng: np.random.Generator | None = None,
                             noise: np.ndarray | None = None) -> np.ndarray:
        return self._standardise(self._ancestral(self._noise_c(n, rng, noise), {}))

    def sample_do(self, intervention: Mapping[int, float], n: int, rng: np.random.Generator | None = None,
                  noise: np.ndarray | None = None) -> np.ndarray:
        return self._standardise(self._ancestral(self._noise_c(n, rng, noise), self._to_raw_do(intervention)))

    def predict_noise(self, x: np.ndarray) -> np.ndarray:
        x = check_rows(x, self.n_nodes, "x")
        raw = np.zeros((1, len(x), self.config.d_max))
        raw[0][:, self._canon] = x * self._std + self._mean
        u = np.stack([raw[0, :, c] - mechanisms.evaluate(self.config.mechanism, self._params, self._adj_c, raw, c)[0]
                      for c in self._canon], axis=1)  # (n, d_real) raw noise
        return u / self._std
