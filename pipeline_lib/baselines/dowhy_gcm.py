"""DoWhy's ``gcm`` as a per-dataset SCM baseline given the true graph (Cond-FiP's reference).

``dowhy.gcm`` (Bloebaum et al., the PyWhy project) fits an invertible structural causal model
on a known DAG: :func:`dowhy.gcm.auto.assign_causal_mechanisms` picks, per node, an empirical
distribution for a root and, for a node with parents, an additive-noise model
``x_v = f_v(x_pa(v)) + n_v`` whose regressor ``f_v`` is chosen among its candidates (linear,
ridge, lasso, gradient boosting, ...) by cross-validation (``quality``: ``good`` or
``better``); :func:`dowhy.gcm.fit` fits them. This module runs it through the library and
exposes the fit as an :class:`pipeline_lib.posterior.SCMGenerator`:

* ``predict_noise(x)``: each node's ``estimate_noise(x_v, x_pa(v))`` (a root: its value);
* generation: ancestral, ``x_v = evaluate(x_pa(v), n_v)`` in a topological order, batched over
  samples, from given noise or from noise bootstrapped per node from the dataset's abducted
  noise (as :mod:`pipeline_lib.baselines.anm` does, so the two compare on the same protocol);
  a hard intervention sets the node;
* the interventional density: the Gaussian KDE of
  :class:`pipeline_lib.posterior.SampledInterventional` on generated samples.

``dowhy`` is an optional dependency, imported only when a fit runs; without it
:func:`fit_gcm` raises :class:`DoWhyUnavailable` naming the install. Checked with dowhy 0.14
(installed with ``--no-deps`` next to this project's scipy: its resolver would downgrade scipy).
"""

from __future__ import annotations

from typing import Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline_lib.baselines.anm import topological_order
from pipeline_lib.metrics.graph import is_dag
from pipeline_lib.posterior import SampledInterventional, SCMGenerator, check_intervention, check_rows


class DoWhyUnavailable(ImportError):
    """The optional ``dowhy`` package is missing."""


class GCMConfig(BaseModel):
    """``quality``: DoWhy's model-selection effort (``good``: a few regressors, ``better``: more)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quality: Literal["good", "better"] = "good"
    seed: int = Field(0, description="seed of DoWhy's model selection and fitting (numpy global state)")


class GCMGenerator(SampledInterventional, SCMGenerator):
    """A fitted ``dowhy.gcm`` invertible SCM on a known DAG (module docstring)."""

    def __init__(self, scm, adjacency: np.ndarray, noise_pool: np.ndarray):
        from dowhy.graph import get_ordered_predecessors

        self.scm = scm
        self.adjacency = np.asarray(adjacency, dtype=np.uint8)
        self.n_nodes = int(self.adjacency.shape[0])
        self.order = topological_order(self.adjacency)
        # DoWhy's regressors read the parents in its own order of predecessors
        self.parents = {v: np.asarray(get_ordered_predecessors(scm.graph, v), dtype=int) for v in range(self.n_nodes)}
        self.noise_pool = noise_pool

    def predict_noise(self, x: np.ndarray) -> np.ndarray:
        """``(n, d)`` noise abducted node by node by the fitted mechanisms."""
        x = check_rows(x, self.n_nodes, "x")
        out = np.empty_like(x)
        for v in range(self.n_nodes):
            pa = self.parents[v]
            if pa.size == 0:
                out[:, v] = x[:, v]
            else:
                out[:, v] = np.asarray(self.scm.causal_mechanism(v).estimate_noise(x[:, v], x[:, pa])).reshape(-1)
        return out

    def _noise(self, n: int, rng: np.random.Generator | None, noise: np.ndarray | None) -> np.ndarray:
        if noise is not None:
            noise = check_rows(noise, self.n_nodes, "noise")
            if len(noise) != n:
                raise ValueError(f"noise has {len(noise)} rows but n={n}")
            return noise
        rng = np.random.default_rng() if rng is None else rng
        idx = rng.integers(0, len(self.noise_pool), size=(n, self.n_nodes))
        return self.noise_pool[idx, np.arange(self.n_nodes)[None, :]]

    def _ancestral(self, noise: np.ndarray, intervention: Mapping[int, float]) -> np.ndarray:
        mask, values = check_intervention(intervention, self.n_nodes)
        x = np.zeros_like(noise)
        for v in self.order:  # loop over nodes; samples are batched
            pa = self.parents[v]
            if mask[v]:
                x[:, v] = values[v]
            elif pa.size == 0:
                x[:, v] = noise[:, v]
            else:
                x[:, v] = np.asarray(self.scm.causal_mechanism(v).evaluate(x[:, pa], noise[:, v])).reshape(-1)
        return x

    def sample_observational(self, n: int, rng: np.random.Generator | None = None,
                             noise: np.ndarray | None = None) -> np.ndarray:
        """``(n, d)`` ancestral samples from given or bootstrapped noise."""
        return self._ancestral(self._noise(n, rng, noise), {})

    def sample_do(self, intervention: Mapping[int, float], n: int, rng: np.random.Generator | None = None,
                  noise: np.ndarray | None = None) -> np.ndarray:
        """``(n, d)`` ancestral samples under the hard intervention ``{node: value}``."""
        return self._ancestral(self._noise(n, rng, noise), intervention)


def fit_gcm(data: dict, config: GCMConfig | Mapping | None = None) -> GCMGenerator:
    """Fit ``dowhy.gcm`` (automatic mechanism assignment) to one dataset given its DAG.

    Args:
        data: ``x_obs (N, d)`` and ``adjacency (d, d)`` (the true DAG, or any DAG supplied).
        config: :class:`GCMConfig` or a dict of its fields.
    """
    cfg = config if isinstance(config, GCMConfig) else GCMConfig(**(config or {}))
    for key in ("x_obs", "adjacency"):
        if key not in data:
            raise ValueError(f"dowhy-gcm data is missing field {key!r}")
    x = np.asarray(data["x_obs"], dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x_obs must be (N >= 2, d), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x_obs contains NaN/inf")
    d = x.shape[1]
    adj = np.asarray(data["adjacency"])
    if adj.shape != (d, d):
        raise ValueError(f"adjacency must be ({d}, {d}) to match x_obs, got {adj.shape}")
    adj = (adj != 0).astype(np.uint8)
    if np.any(np.diag(adj)) or not is_dag(adj):
        raise ValueError("adjacency is not a DAG")
    try:
        import networkx as nx
        import pandas as pd
        from dowhy import gcm
    except ImportError as exc:
        raise DoWhyUnavailable(f"dowhy-gcm needs the optional package dowhy ({exc}); install it with "
                               "`pip install --no-deps dowhy==0.14 causal-learn statsmodels patsy formulaic "
                               "interface_meta wrapt pydot momentchi2` (README, Cond-FiP)") from exc
    gcm.config.disable_progress_bars()
    graph = nx.DiGraph()
    graph.add_nodes_from(range(d))
    graph.add_edges_from(zip(*np.nonzero(adj)))
    frame = pd.DataFrame(x, columns=list(range(d)))
    scm = gcm.InvertibleStructuralCausalModel(graph)
    state = np.random.get_state()
    np.random.seed(cfg.seed)  # DoWhy's model selection and sklearn fits draw from numpy's global state
    try:
        quality = {"good": gcm.auto.AssignmentQuality.GOOD, "better": gcm.auto.AssignmentQuality.BETTER}[cfg.quality]
        gcm.auto.assign_causal_mechanisms(scm, frame, quality=quality)
        gcm.fit(scm, frame)
    finally:
        np.random.set_state(state)
    gen = GCMGenerator(scm, adj, np.zeros((0, d)))
    gen.noise_pool = gen.predict_noise(x)
    return gen
