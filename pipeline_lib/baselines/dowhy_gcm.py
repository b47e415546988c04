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

from pipeline_lib.baselines.anm import ANMGenerator, check_scm_data
from pipeline_lib.posterior import check_intervention, check_rows


class DoWhyUnavailable(ImportError):
    """The optional ``dowhy`` package is missing."""


class GCMConfig(BaseModel):
    """``quality``: DoWhy's model-selection effort (``good``: a few regressors, ``better``: more)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quality: Literal["good", "better"] = "good"
    seed: int = Field(0, description="seed of DoWhy's model selection and fitting (numpy global state)")


class GCMGenerator(ANMGenerator):
    """A fitted ``dowhy.gcm`` invertible SCM on a known DAG (module docstring): the noise pool and
    the sampling of :class:`~pipeline_lib.baselines.anm.ANMGenerator`, DoWhy's mechanisms for
    abduction and generation. ``x: (N, d)`` the fitting rows (their abducted noise is the pool)."""

    def __init__(self, scm, adjacency: np.ndarray, x: np.ndarray):
        from dowhy.graph import get_ordered_predecessors

        super().__init__(adjacency, None, np.zeros((0, len(adjacency))), "dowhy-gcm")
        self.scm = scm
        # DoWhy's regressors read the parents in its own order of predecessors
        self.parents = {v: np.asarray(get_ordered_predecessors(scm.graph, v), dtype=int) for v in range(self.n_nodes)}
        self.residuals = self.predict_noise(x)

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


def fit_gcm(data: dict, config: GCMConfig | Mapping | None = None) -> GCMGenerator:
    """Fit ``dowhy.gcm`` (automatic mechanism assignment) to one dataset given its DAG.

    Args:
        data: ``x_obs (N, d)`` and ``adjacency (d, d)`` (the true DAG, or any DAG supplied).
        config: :class:`GCMConfig` or a dict of its fields.
    """
    cfg = config if isinstance(config, GCMConfig) else GCMConfig(**(config or {}))
    x, adj = check_scm_data(data, "dowhy-gcm")
    d = x.shape[1]
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
    return GCMGenerator(scm, adj, x)
