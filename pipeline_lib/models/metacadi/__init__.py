"""MetaCaDI (Ong, Chikahara & Iwata, AAAI'26): meta-learning a shared DAG and per-experiment
unknown intervention targets, with closed-form (ridge) adaptation to new experiments.

Setting: one *system* (one DAG and its mechanisms) observed in many experiments, each
intervening (hard or soft) on its own unknown subset of the variables. MetaCaDI learns a
variational posterior

    q(A, {m_t} | D) = q_phi,psi(A) prod_t q(m_t | A, D_t)

with ``q(A)`` a DP-DAG (:mod:`pipeline_lib.models.dpdag`) and ``q(m_t | A, D_t)`` a target
predictor fed by the predictions of an observational and an interventional mechanism on
the experiment's support rows (:mod:`.targets`); the interventional mechanism's last layer
``w_ti`` is the only task-specific parameter and is solved by ridge regression on the
support set (:mod:`.likelihood`); the training objective is eq. 7 (:mod:`.model`).

Store layout (no change to the data contract). One system = ONE task of a prior with
K >= T + T' regimes and n_int >= n_support + n_query rows per regime, targets unknown:

* regimes ``0..T-1`` (``n_train_tasks``) are the meta-training experiments: their first
  ``n_support`` rows are the support set, the next ``n_query`` rows the query set;
* regimes ``T..K-1`` (at least ``n_test_tasks``) are meta-test experiments, each adapted to
  from its first ``n_test_rows`` rows only, one at a time, with the trained model frozen;
* with ``use_obs`` the first ``n_support + n_query`` rows of ``x_obs`` are one more
  meta-training experiment (an observational one, but the method is not told so).

Defaults are the paper's protocol: T = T' = 20, 10 support + 100 query rows, 10 rows per
meta-test experiment. ``int_targets`` and ``adjacency`` are never read.

Entry point: :func:`fit_metacadi(data, config) -> MetaCaDIPosterior` with ``data`` =
``pipeline_lib.taskdata.restrict(task)``. The posterior implements
:class:`~pipeline_lib.posterior.GraphPosterior` (edge probabilities, DAG samples) and
:class:`~pipeline_lib.posterior.TargetPosterior` (``(K, d)`` target probabilities of all
regimes in store order), plus ``adapt(x_new: (n, d)) -> (d,)`` for a new experiment.
"""
from pipeline_lib.models.metacadi.config import MetaCaDIConfig, MetaCaDIInputError
from pipeline_lib.models.metacadi.fit import MetaCaDIPosterior, fit_metacadi, split_experiments
from pipeline_lib.models.metacadi.model import MetaCaDIModel

__all__ = ["MetaCaDIConfig", "MetaCaDIInputError", "MetaCaDIModel", "MetaCaDIPosterior", "fit_metacadi",
           "split_experiments"]
