"""GIM: generative intervention models (Schneider, Lorch, Kilbertus, Schölkopf & Krause,
arXiv 2411.14003): predict the effect of unseen perturbations through a learned causal model.

Setting: one *system* (one DAG and its mechanisms) observed in many experiments ``e``, each
described by features ``gamma_e`` (e.g. a drug embedding and a dose) whose atomic
interventions are unknown. GIM learns the causal model ``M = (G, theta)`` and a network
``phi: gamma -> p(I | gamma), psi(gamma)`` (targets; shift / scale of the intervened
mechanisms) jointly, by MAP over the seen experiments (:mod:`.model`); for an unseen
``gamma`` it samples ``p(x; M, gamma, phi)`` and names the predicted targets.

Store layout (no change to the data contract): one system = ONE task of a prior with K
regimes and ``perturbation: (K, p)``; the last ``n_test_regimes`` regimes are the unseen
experiments (``pipeline_lib.priors.perturbation`` stores held-out drug-dose combinations
there). ``int_targets`` and ``adjacency`` are never read.

Entry point: :func:`fit_gim(data, config) -> GIMPosterior` with ``data`` =
``pipeline_lib.taskdata.restrict(task)``. Baselines of the GIM comparison: BaCaDI*
(``pipeline_lib.models.gim.baselines.fit_bacadi_star``) and the black-box conditional
Gaussian (``fit_blackbox``); distribution metrics in :mod:`.metrics`.
"""
from pipeline_lib.models.gim.config import GIMConfig, GIMInputError
from pipeline_lib.models.gim.fit import GIMPosterior, fit_gim, split_experiments
from pipeline_lib.models.gim.model import GIMModel

__all__ = ["GIMConfig", "GIMInputError", "GIMModel", "GIMPosterior", "fit_gim", "split_experiments"]
