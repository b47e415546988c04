"""The one posterior type every baseline returns and every metric accepts.

A causal posterior answers four questions about one dataset:

* ``edge_probs()``: marginal edge probabilities ``P(i -> j | D)``, shape ``(d, d)``;
* ``sample_graphs(n, rng)``: DAG samples ``(n, d, d)`` (uint8, ``A[i, j] = 1`` iff ``i -> j``);
* ``intervention_target_probs()``: ``(K, d)`` probabilities that node ``v`` is a target of
  regime ``k``, for methods that infer targets (``None`` otherwise);
* ``interventional_log_density(j, a, i, x)``: the Bayesian model-averaged density

      p(x_i | do(X_j = a), D) = sum_G p(G | D) p(x_i | do(X_j = a), G, D)

  evaluated at the points ``x`` (shape ``(m,)``), returned with the Monte Carlo standard
  error of each log density (zero where it is closed form), and
  ``sample_interventional(j, a, n, rng)`` drawing ``(n, d)`` joint samples from it.

Most posteriors here are mixtures over a finite set of graphs (exact enumeration: all
DAGs; DiBS/BaCaDI: the particles), so :class:`GraphMixturePosterior` implements the graph
part once. :class:`AncestralGaussianPosterior` implements the interventional part for any
model whose conditionals are Gaussian, ``X_v | pa(v) ~ N(f_v(pa(v)), sigma_v^2)``, with
nonlinear ``f_v`` (DiBS-joint, DCDI): the density of ``X_i`` is Rao-Blackwellised,

      p(x_i | do(X_j = a)) ~= sum_p w_p (1/S) sum_s N(x_i; f_{p,i}(pa_i^{(p,s)}), sigma_{p,i}^2),

where ``pa_i^{(p,s)}`` are ancestral samples of ``X_i``'s parents under the intervention
in mixture component ``p``; only the parents are sampled, the last step is exact.
"""
from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch

from pipeline_lib.posterior import (DensityEstimate, GraphPosterior, InterventionalPredictor, TargetPosterior,
                                    check_query)

__all__ = ["AncestralGaussianPosterior", "CausalPosterior", "DensityEstimate", "GraphMixturePosterior",
           "check_query", "stack_known_interventions"]


def stack_known_interventions(x_obs: np.ndarray, x_int: np.ndarray | None, int_targets: np.ndarray | None,
                              error: type[Exception] = ValueError) -> tuple[np.ndarray, np.ndarray | None]:
    """Pool observational and known-target interventional data for a likelihood.

    ``x_obs: (N, d)``, ``x_int: (K, n_int, d)``, ``int_targets: (K, d)`` bool (both or
    neither). Returns ``x: (N + K n_int, d)`` float64 and ``mask`` of the same shape, True
    where the row's regime intervened on the node (its conditional is dropped from the
    likelihood), or None without interventional data. Shape errors raise ``error``.
    """
    x_obs = np.asarray(x_obs, dtype=np.float64)
    d = x_obs.shape[1]
    if (x_int is None) != (int_targets is None):
        raise error("x_int and int_targets must be given together")
    if x_int is None:
        return x_obs, None
    x_int = np.asarray(x_int, dtype=np.float64)
    int_targets = np.asarray(int_targets, dtype=bool)
    if x_int.ndim != 3 or x_int.shape[2] != d:
        raise error(f"x_int must have shape (K, n_int, {d}), got {x_int.shape}")
    if int_targets.shape != (x_int.shape[0], d):
        raise error(f"int_targets must have shape ({x_int.shape[0]}, {d}), got {int_targets.shape}")
    K, n_int = x_int.shape[:2]
    x = np.concatenate([x_obs, x_int.reshape(K * n_int, d)])
    mask = np.concatenate([np.zeros_like(x_obs, dtype=bool), np.repeat(int_targets, n_int, axis=0)])
    return x, mask


class CausalPosterior(GraphPosterior, TargetPosterior, InterventionalPredictor):
    """A posterior over causal models of one dataset: graph, (optional) targets and
    interventional densities (see module docstring and :mod:`pipeline_lib.posterior`)."""

    n_nodes: int

    def intervention_target_probs(self) -> np.ndarray | None:
        """(K, d) target probabilities per regime, for methods that infer targets."""
        return None


class GraphMixturePosterior(CausalPosterior):
    """A posterior that is a weighted mixture over P graphs.

    graphs: (P, d, d) 0/1, log_weights: (P,) unnormalised log weights. Components with
    weight -inf are allowed (they never get sampled).
    """

    #: the final SVGD particles (cyclic ones included) where the posterior came from a
    #: particle method (DiBS, DiBS-joint, BaCaDI); None otherwise
    particles = None

    def __init__(self, graphs: np.ndarray, log_weights: np.ndarray):
        graphs = np.asarray(graphs)
        log_weights = np.asarray(log_weights, dtype=np.float64)
        if graphs.ndim != 3 or graphs.shape[1] != graphs.shape[2]:
            raise ValueError(f"graphs must have shape (P, d, d), got {graphs.shape}")
        if log_weights.shape != (graphs.shape[0],):
            raise ValueError(
                f"log_weights must have shape ({graphs.shape[0]},) to match graphs, got {log_weights.shape}"
            )
        if not np.isfinite(log_weights).any():
            raise ValueError("log_weights: every mixture component has zero weight")
        self.graphs = (graphs != 0).astype(np.uint8)
        self.log_weights = log_weights - np.logaddexp.reduce(log_weights)
        self.n_nodes = graphs.shape[1]

    @property
    def weights(self) -> np.ndarray:
        return np.exp(self.log_weights)

    def edge_probs(self) -> np.ndarray:
        return np.einsum("p,pij->ij", self.weights, self.graphs.astype(np.float64))

    def sample_graphs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        idx = rng.choice(len(self.graphs), size=n, p=self.weights)
        return self.graphs[idx]


class AncestralGaussianPosterior(GraphMixturePosterior):
    """Mixture of nonlinear-Gaussian SCMs; interventional densities by Rao-Blackwellisation.

    Subclasses provide ``conditional_mean(x) -> (P, S, d)``: for every component p and
    every sample s, the mean ``f_{p,v}(x_{pa_p(v)})`` of each node given the full vector
    ``x: (P, S, d)`` (a torch float64 tensor; parents read through the component's graph),
    and ``noise_std: (P, d)``. Ancestral sampling under do(X_j = a) is done for all
    components and samples at once by the fixed-point sweep ``x <- f(x) + sigma * eps``
    (``x_j`` clamped to ``a``) repeated d times: on a DAG with fixed noise ``eps`` this
    reaches the ancestral sample after at most (longest path + 1) sweeps, with no Python
    loop over samples or components.
    """

    noise_std: np.ndarray  # (P, d)

    def __init__(self, graphs: np.ndarray, log_weights: np.ndarray, n_mc: int = 256):
        super().__init__(graphs, log_weights)
        self.n_mc = int(n_mc)

    @abstractmethod
    def conditional_mean(self, x: torch.Tensor) -> torch.Tensor:
        """(P, S, d) -> (P, S, d) conditional means of each node given its parents."""

    def _ancestral(self, j: int, a: float, eps: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(self.noise_std, dtype=torch.float64)[:, None, :]
        x = sigma * eps
        x[..., j] = a
        with torch.no_grad():
            for _ in range(self.n_nodes):
                x = self.conditional_mean(x) + sigma * eps
                x[..., j] = a
        return x

    def interventional_log_density(self, j: int, a: float, i: int, x: np.ndarray) -> DensityEstimate:
        check_query(j, i, self.n_nodes)
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        gen = torch.Generator().manual_seed(int(1_000_003 * j + 7919 * i) + 17)
        P = len(self.graphs)
        eps = torch.randn(P, self.n_mc, self.n_nodes, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            xs = self._ancestral(j, a, eps)
            mean_i = self.conditional_mean(xs)[..., i].numpy()  # (P, S)
        std_i = np.asarray(self.noise_std, dtype=np.float64)[:, i]  # (P,)
        z = (x[None, None, :] - mean_i[..., None]) / std_i[:, None, None]
        log_n = -0.5 * z**2 - np.log(std_i)[:, None, None] - 0.5 * np.log(2 * np.pi)  # (P, S, m)
        # log p_hat = logsumexp_p [log w_p + log mean_s N(...)]
        log_comp = np.logaddexp.reduce(log_n, axis=1) - np.log(self.n_mc)  # (P, m)
        log_p = np.logaddexp.reduce(self.log_weights[:, None] + log_comp, axis=0)  # (m,)
        # delta method: var(p_hat) = sum_p w_p^2 var_s(N) / S
        scaled = np.exp(log_n - log_p[None, None, :])  # N / p_hat
        var = np.einsum("p,pm->m", self.weights**2, scaled.var(axis=1, ddof=1)) / self.n_mc
        return DensityEstimate(log_density=log_p, mc_stderr=np.sqrt(var))

    def sample_interventional(self, j: int, a: float, n: int, rng: np.random.Generator) -> np.ndarray:
        if not 0 <= int(j) < self.n_nodes:
            raise ValueError(f"intervened node j={j} is out of range for {self.n_nodes} nodes")
        comp = rng.choice(len(self.graphs), size=n, p=self.weights)
        counts = np.bincount(comp, minlength=len(self.graphs))
        eps = torch.as_tensor(rng.standard_normal((len(self.graphs), max(counts.max(), 1), self.n_nodes)))
        xs = self._ancestral(j, a, eps).numpy()
        # component p contributes its first counts[p] samples
        take = np.arange(xs.shape[1])[None, :] < counts[:, None]
        return rng.permutation(xs[take], axis=0)
