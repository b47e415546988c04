"""What a method answers about one dataset: four small capability interfaces.

Every method, amortized (MACE-TNP, MetaCaDI, GIM, Cond-FiP) or per dataset (exact, DiBS,
BaCaDI, DCDI), answers one dataset with an object implementing the capabilities it has:

* :class:`GraphPosterior`: marginal edge probabilities ``P(i -> j | D)`` ``(d, d)`` and DAG
  samples ``(n, d, d)`` (uint8, ``A[i, j] = 1`` iff ``i -> j``);
* :class:`TargetPosterior`: ``(K, d)`` probabilities that node ``v`` is a target of regime
  ``k`` (methods that infer unknown intervention targets);
* :class:`InterventionalPredictor`: the (model-averaged) interventional density

      q(x_i | do(X_j = a), D)

  at given points, and joint samples under ``do(X_j = a)``;
* :class:`SCMGenerator`: a generative SCM: observational, interventional and counterfactual
  samples from given or fresh exogenous noise, and noise abduction.

Evaluation (``pipeline_lib.evaluation``) picks metrics by :func:`capabilities`; a method
that lacks a capability gets "-" for its metrics, never a zero. Nodes are the dataset's
real nodes, numbered ``0..d-1``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy.special import logsumexp


@dataclass(frozen=True)
class DensityEstimate:
    """Log densities at query points and the Monte Carlo standard error of each.

    ``log_density``: (m,) or (Q, M); ``mc_stderr``: same shape, the delta-method standard
    error of the log density estimate (``sd(p_s) / (sqrt(S) * p_hat)``), exactly zero for
    closed forms.
    """

    log_density: np.ndarray
    mc_stderr: np.ndarray


def check_query(j: int, i: int, d: int) -> None:
    """Validate an intervention query do(X_j = a) with outcome X_i on d nodes."""
    for name, v in (("intervened node j", j), ("outcome node i", i)):
        if not 0 <= int(v) < d:
            raise ValueError(f"{name}={v} is out of range for a graph with {d} nodes")
    if int(i) == int(j):
        raise ValueError(f"outcome node i={i} equals the intervened node j; its density is a point mass")


class GraphPosterior(ABC):
    """A distribution over DAGs on ``n_nodes`` nodes."""

    n_nodes: int

    @abstractmethod
    def edge_probs(self) -> np.ndarray:
        """Marginal edge probabilities, (d, d), zero diagonal."""

    @abstractmethod
    def sample_graphs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n graph samples, (n, d, d) uint8."""


class TargetPosterior(ABC):
    """Per-regime intervention-target probabilities."""

    @abstractmethod
    def intervention_target_probs(self) -> np.ndarray | None:
        """(K, d) probability that node v is a target of regime k; None if not inferred."""


class InterventionalPredictor(ABC):
    """Predictive law of ``X_i`` under ``do(X_j = a)`` given the dataset.

    Subclasses answer one query (:meth:`interventional_log_density`,
    :meth:`sample_interventional`); the batched forms used by evaluation loop over queries
    by default and are overridden where a method answers all queries in one pass.
    """

    n_nodes: int

    @abstractmethod
    def interventional_log_density(self, j: int, a: float, i: int, x: np.ndarray) -> DensityEstimate:
        """log q(x_i | do(X_j = a), D) at the points x (m,)."""

    @abstractmethod
    def sample_interventional(self, j: int, a: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """n joint samples (n, d) from q(x | do(X_j = a), D)."""

    def log_density_batch(self, j: np.ndarray, a: np.ndarray, i: np.ndarray, x: np.ndarray) -> DensityEstimate:
        """Q queries at once: ``j, a, i: (Q,)``, ``x: (Q, M)`` -> log densities ``(Q, M)``."""
        est = [self.interventional_log_density(int(jq), float(aq), int(iq), xq) for jq, aq, iq, xq in zip(j, a, i, x)]
        return DensityEstimate(np.stack([e.log_density for e in est]), np.stack([e.mc_stderr for e in est]))

    def quantiles_batch(self, j: np.ndarray, a: np.ndarray, i: np.ndarray, probs: np.ndarray,
                        rng: np.random.Generator, n_samples: int = 2000) -> np.ndarray:
        """``(Q, P)`` predictive quantiles of ``X_i`` at levels ``probs`` (empirical, from
        ``n_samples`` draws per query unless a subclass has them in closed form)."""
        out = np.empty((len(j), len(probs)))
        for k, (jq, aq, iq) in enumerate(zip(j, a, i)):
            out[k] = np.quantile(self.sample_interventional(int(jq), float(aq), n_samples, rng)[:, int(iq)], probs)
        return out


class SCMGenerator(ABC):
    """A generative structural causal model ``x = F(x, u)`` on ``n_nodes`` nodes.

    ``intervention`` maps node -> value for hard interventions ``do(X_j = a)``. Passing
    ``noise`` ``(n, d)`` makes samples comparable with a reference generated from the same
    exogenous noise (Cond-FiP's RMSE protocol); otherwise fresh noise comes from ``rng``.
    """

    n_nodes: int

    @abstractmethod
    def sample_observational(self, n: int, rng: np.random.Generator | None = None,
                             noise: np.ndarray | None = None) -> np.ndarray:
        """(n, d) observational samples."""

    @abstractmethod
    def sample_do(self, intervention: Mapping[int, float], n: int, rng: np.random.Generator | None = None,
                  noise: np.ndarray | None = None) -> np.ndarray:
        """(n, d) samples under the hard intervention."""

    @abstractmethod
    def predict_noise(self, x: np.ndarray) -> np.ndarray:
        """(n, d) exogenous noise abducted from samples ``x: (n, d)``."""

    def counterfactual(self, x: np.ndarray, intervention: Mapping[int, float]) -> np.ndarray:
        """(n, d) counterfactuals of the factual rows ``x``: abduct the noise, then act."""
        x = np.asarray(x)
        return self.sample_do(intervention, len(x), noise=self.predict_noise(x))


class SampledInterventional(InterventionalPredictor):
    """Interventional density as a Gaussian kernel density estimate on ``S`` samples of
    :meth:`sample_do`, for generators without a closed-form density (Cond-FiP, ANM fits)::

        q(x_i | do(X_j = a)) = (1/S) sum_s N(x_i; y_s, h^2),  h = 1.06 sd(y) S^(-1/5),

    with the delta-method standard error ``sd_s(k_s) / (sqrt(S) q)`` of the log estimate. Subclasses provide ``sample_do`` and ``n_nodes``; samples of a
    query are drawn from ``default_rng([kde_seed, j])`` and cached, so repeated queries
    give identical answers.

    Options (class attributes; the defaults above are what the ANM and GIM answers use):

    * ``density = "gaussian"``: a normal fitted to the same draws instead of the KDE,
      ``q = N(x_i; mean(y), sd(y)^2 + e_i)`` (sd with ddof 1; ``e_i`` from
      :meth:`density_extra_variance`, 0 unless a subclass says), with the delta-method standard error
      ``sqrt(z^2 / S + (z^2 - 1)^2 / (2 S))``, ``z = (x - mean) / sd``, of the log density;
    * ``quantiles_from_draws = True``: :meth:`quantiles_batch` reads the cached draws of each
      ``(j, a)`` (one ``sample_do`` per intervention, shared by all its outcome nodes) instead
      of ``n_samples`` fresh draws per query; the quantiles are the normal's for
      ``density = "gaussian"``, the draws' empirical ones otherwise."""

    kde_samples: int = 2000
    kde_seed: int = 0
    density: str = "kde"
    quantiles_from_draws: bool = False

    def _kde_draws(self, j: int, a: float) -> np.ndarray:
        cache = self.__dict__.setdefault("_kde_cache", {})
        key = (int(j), float(a))
        if key not in cache:
            rng = np.random.default_rng([self.kde_seed, int(j)])
            cache[key] = self.sample_do({int(j): float(a)}, self.kde_samples, rng=rng)
        return cache[key]

    def interventional_log_density(self, j: int, a: float, i: int, x: np.ndarray) -> DensityEstimate:
        """``log q(x_i | do(X_j = a))`` at ``x: (m,)`` by the KDE of the module docstring."""
        check_query(j, i, self.n_nodes)
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if not np.isfinite(x).all():
            raise ValueError("x (query points) contains NaN/inf")
        y = self._kde_draws(j, a)[:, int(i)]
        s = y.size
        if self.density == "gaussian":
            mu, sd = self._gaussian(y, int(i))
            z = (x - mu) / sd
            logq = -0.5 * z**2 - np.log(sd * np.sqrt(2.0 * np.pi))
            return DensityEstimate(logq, np.sqrt(z**2 / s + (z**2 - 1.0) ** 2 / (2.0 * s)))
        if self.density != "kde":
            raise ValueError(f"density must be 'kde' or 'gaussian', got {self.density!r}")
        spread = float(np.std(y))
        h = max(1.06 * spread * s ** (-0.2), 1e-3 * max(spread, 1.0))
        logk = -0.5 * ((x[:, None] - y[None, :]) / h) ** 2 - np.log(h * np.sqrt(2.0 * np.pi))  # (m, S)
        lse = logsumexp(logk, axis=1)
        w = np.exp(logk - lse[:, None])  # k_s / sum_s k_s
        se = np.sqrt(np.maximum(s * (w**2).sum(1) - 1.0, 0.0) / s)
        return DensityEstimate(lse - np.log(s), se)

    def sample_interventional(self, j: int, a: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` joint samples ``(n, d)`` under ``do(X_j = a)`` from fresh noise."""
        return self.sample_do({int(j): float(a)}, n, rng=rng)

    def _gaussian(self, y: np.ndarray, i: int) -> tuple[float, float]:
        """(mean, sd) of ``density = "gaussian"`` for the draws ``y`` of outcome ``i``."""
        return float(y.mean()), max(float(np.sqrt(np.var(y, ddof=1) + self.density_extra_variance(i))), 1e-6)

    def density_extra_variance(self, i: int) -> float:
        """Variance added to the draws' variance of outcome ``i`` by ``density = "gaussian"``
        (0 here; a generator may add an estimate of its own error)."""
        return 0.0

    def quantiles_batch(self, j: np.ndarray, a: np.ndarray, i: np.ndarray, probs: np.ndarray,
                        rng: np.random.Generator, n_samples: int = 2000) -> np.ndarray:
        """``(Q, P)`` quantiles; from the cached draws with ``quantiles_from_draws`` (class docstring)."""
        if not self.quantiles_from_draws:
            return super().quantiles_batch(j, a, i, probs, rng, n_samples)
        from scipy.stats import norm

        probs = np.asarray(probs, dtype=np.float64)
        out = np.empty((len(j), len(probs)))
        for k, (jq, aq, iq) in enumerate(zip(j, a, i)):
            check_query(int(jq), int(iq), self.n_nodes)
            y = self._kde_draws(int(jq), float(aq))[:, int(iq)]
            if self.density == "gaussian":
                mu, sd = self._gaussian(y, int(iq))
                out[k] = mu + sd * norm.ppf(probs)
            else:
                out[k] = np.quantile(y, probs)
        return out


def check_rows(x: np.ndarray, d: int, name: str) -> np.ndarray:
    """``x`` as float64 ``(n, d)`` with finite entries, else ``ValueError`` naming ``name``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, {d}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN/inf")
    return x


def check_intervention(intervention: Mapping[int, float], d: int) -> tuple[np.ndarray, np.ndarray]:
    """``{node: value}`` -> ``(mask (d,) bool, values (d,))``; nodes in range, values finite."""
    mask, values = np.zeros(d, dtype=bool), np.zeros(d)
    for j, a in dict(intervention).items():
        if not 0 <= int(j) < d:
            raise ValueError(f"intervention node {j} is out of range for {d} nodes")
        if not np.isfinite(float(a)):
            raise ValueError(f"intervention value for node {j} is not finite: {a}")
        mask[int(j)], values[int(j)] = True, float(a)
    return mask, values


#: capability name -> interface; the names are those of the report's "answers" column
CAPABILITIES: dict[str, type] = {
    "graph": GraphPosterior,
    "targets": TargetPosterior,
    "interventional": InterventionalPredictor,
    "generator": SCMGenerator,
}


def capabilities(answer: object) -> frozenset[str]:
    """The capabilities ``answer`` implements (a target posterior that returns None, as
    DCDI does with known targets, does not count)."""
    caps = {name for name, cls in CAPABILITIES.items() if isinstance(answer, cls)}
    if "targets" in caps and answer.intervention_target_probs() is None:
        caps.discard("targets")
    return frozenset(caps)
