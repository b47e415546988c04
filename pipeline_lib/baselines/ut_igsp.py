"""UT-IGSP (Squires, Wang & Uhler 2020): unknown-target interventional greedy sparsest permutation.

A wrapper of the maintained implementation in the ``graphical-model-learning`` package
(``graphical_model_learning.unknown_target_igsp``, with the Gaussian partial-correlation CI
test and the Gaussian invariance test of ``conditional-independence``). It is an optional
dependency, imported only when a fit runs; without it :func:`fit_ut_igsp` raises
:class:`UTIGSPUnavailable` naming the install line. Installing it pulls in ``pygam``
(``scipy < 1.17``), ``xgboost`` and ``pgmpy``, which is why it is not a core dependency
(README, MetaCaDI row).

Setting: observational rows ``x_obs`` plus ``K`` interventional regimes ``x_int`` with UNKNOWN
targets (no target is given to the method: every setting's ``known_interventions`` is empty).
UT-IGSP answers with ONE DAG (a point estimate of the interventional MEC's member) and, per
regime, a set of estimated targets; the answer is a point mass: edge probabilities and target
probabilities are 0/1, every graph sample is that DAG. The CI / invariance tests assume
linear-Gaussian data (the method's own simplification, not ours); on nonlinear or count data
they are misspecified.
"""
from __future__ import annotations

import random

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline_lib.posterior import GraphPosterior, TargetPosterior

INSTALL = ("pip install --pre graphical-model-learning==0.1a8 graphical-models==0.1a21 "
           "conditional-independence==0.1a6")


class UTIGSPUnavailable(ImportError):
    """The optional ``graphical-model-learning`` package (UT-IGSP's implementation) is missing."""


class UTIGSPInputError(ValueError):
    """Bad data for :func:`fit_ut_igsp`; names the array."""


class UTIGSPConfig(BaseModel):
    """Test levels and search budget of UT-IGSP (the library's defaults except the alphas)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    alpha_ci: float = Field(1e-3, gt=0, lt=1, description="level of the partial-correlation CI tests")
    alpha_inv: float = Field(1e-3, gt=0, lt=1, description="level of the invariance tests between settings")
    depth: int = Field(4, ge=1, description="depth of the depth-first search over covered-edge reversals")
    nruns: int = Field(5, ge=1, description="restarts; the sparsest DAG over the runs is returned")
    seed: int = Field(0, ge=0, description="seeds the library's random initial permutations")


class UTIGSPPosterior(GraphPosterior, TargetPosterior):
    """Point mass on UT-IGSP's DAG ``adjacency: (d, d)`` with 0/1 ``targets: (K, d)``."""

    def __init__(self, adjacency: np.ndarray, targets: np.ndarray):
        self.adjacency = np.asarray(adjacency, dtype=np.uint8)
        self.targets = np.asarray(targets, dtype=np.float64)
        self.n_nodes = self.adjacency.shape[0]

    def edge_probs(self) -> np.ndarray:
        return self.adjacency.astype(np.float64)

    def sample_graphs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.repeat(self.adjacency[None], n, axis=0)

    def intervention_target_probs(self) -> np.ndarray:
        return self.targets


def _library():
    try:
        import graphical_model_learning as gml
        from conditional_independence import (MemoizedCI_Tester, MemoizedInvarianceTester, gauss_invariance_suffstat,
                                              gauss_invariance_test, partial_correlation_suffstat,
                                              partial_correlation_test)
    except ImportError as exc:
        raise UTIGSPUnavailable(f"ut-igsp needs the optional UT-IGSP implementation ({exc}); install it with "
                                f"`{INSTALL}`") from None
    return gml, (MemoizedCI_Tester, MemoizedInvarianceTester, gauss_invariance_suffstat, gauss_invariance_test,
                 partial_correlation_suffstat, partial_correlation_test)


def fit_ut_igsp(x_obs: np.ndarray, x_int: np.ndarray, config: UTIGSPConfig | None = None) -> UTIGSPPosterior:
    """UT-IGSP on ``x_obs: (N, d)`` and ``x_int: (K, n_int, d)`` (targets unknown)."""
    cfg = config or UTIGSPConfig()
    x_obs = np.asarray(x_obs, dtype=np.float64)
    x_int = np.asarray(x_int, dtype=np.float64)
    if x_obs.ndim != 2 or x_obs.shape[0] < 3:
        raise UTIGSPInputError(f"x_obs must have shape (N >= 3, d), got {x_obs.shape}")
    d = x_obs.shape[1]
    if x_int.ndim != 3 or x_int.shape[2] != d or x_int.shape[0] < 1 or x_int.shape[1] < 3:
        raise UTIGSPInputError(f"x_int must have shape (K >= 1, n_int >= 3, {d}), got {x_int.shape}")
    if not (np.isfinite(x_obs).all() and np.isfinite(x_int).all()):
        raise UTIGSPInputError("x_obs / x_int contain NaN or inf")
    gml, (ci_cls, inv_cls, inv_suff, inv_test, ci_suff, ci_test) = _library()
    ci = ci_cls(ci_test, ci_suff(x_obs), alpha=cfg.alpha_ci)
    inv = inv_cls(inv_test, inv_suff(x_obs, list(x_int)), alpha=cfg.alpha_inv)
    settings = [{"known_interventions": set()} for _ in range(x_int.shape[0])]
    # the library draws its initial permutations from the global random / numpy streams
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    try:
        dag, targets = gml.unknown_target_igsp(settings, set(range(d)), ci, inv, depth=cfg.depth, nruns=cfg.nruns)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    adj = np.zeros((d, d), dtype=np.uint8)
    for i, j in dag.arcs:
        adj[int(i), int(j)] = 1
    probs = np.zeros((x_int.shape[0], d))
    for k, tk in enumerate(targets):
        probs[k, [int(i) for i in tk]] = 1.0
    return UTIGSPPosterior(adj, probs)
