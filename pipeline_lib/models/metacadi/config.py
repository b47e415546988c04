"""``MetaCaDIConfig``: sizes of the meta-learning split and every hyper-parameter of MetaCaDI.

The split fields say how ONE stored task (one *system*: one DAG and its mechanisms) is cut
into experiments (see :mod:`pipeline_lib.models.metacadi` for the store layout).
"""
from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from pipeline_lib.models.dpdag import DPDAGOptions


class MetaCaDIInputError(ValueError):
    """Bad data for :func:`~pipeline_lib.models.metacadi.fit_metacadi`; names the array or field."""


class MetaCaDIConfig(DPDAGOptions):
    """Hyper-parameters of MetaCaDI (defaults: the paper's protocol T = T' = 20, 10 / 100 / 10 rows)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- how one system's regimes become meta-training / meta-test experiments
    n_train_tasks: int = Field(20, ge=1, description="T: regimes 0..T-1 are meta-training experiments")
    n_test_tasks: int = Field(20, ge=0, description="T': regimes T..T+T'-1 are meta-test experiments")
    n_support: int = Field(10, ge=2, description="support rows of a meta-training experiment (its first rows)")
    n_query: int = Field(100, ge=1, description="query rows of a meta-training experiment (the next rows)")
    n_test_rows: int = Field(10, ge=2, description="rows a meta-test experiment is adapted on (its first rows)")
    use_obs: bool = Field(True, description="x_obs's first n_support + n_query rows are one more meta-training "
                                            "experiment (its targets are inferred like any other)")
    standardize: bool = Field(True, description="standardize by the pooled mean / std of the meta-training rows")

    # --- likelihood: X_i = (1 - m_ti) f_i(A_i * X) + m_ti w_ti^T h_i(A_i * X) + eps_i
    hidden: int = Field(32, ge=1, description="hidden units of the mechanism MLPs")
    layers: int = Field(2, ge=1, description="hidden layers of f_i and of the feature extractor h_i")
    feat_dim: int = Field(8, ge=1, description="d_h: features of h_i (a constant feature is appended)")
    ridge_lambda: float = Field(1.0, gt=0, description="lambda of the ridge solution w = (H^T H + lambda I)^-1 H^T x")
    inner: Literal["closed_form", "intv_maml", "full_maml"] = Field(
        "closed_form", description="task adaptation: ridge (MetaCaDI-Analytical) or MAML on f^I / on f and f^I")
    inner_steps: int = Field(10, ge=1, description="MAML inner gradient steps")
    inner_lr: float = Field(0.1, gt=0, description="MAML inner learning rate")
    first_order: bool = Field(False, description="first-order MAML (no second derivatives in the outer loop)")

    noise: Literal["unit", "learned"] = Field(
        "unit", description="eps_i ~ N(0, 1) (the paper: L_R is the MSE) or N(0, sigma_i^2) with a learned "
                            "per-node sigma (L_R is the Gaussian NLL)")

    # --- target predictor g_eta(F_t), F_t = [mean_n h(c_n), h(mean_n c_n)]
    predictor: Literal["joint", "per_node"] = Field(
        "per_node", description="joint: h maps the 9d row features to k (the paper); per_node: one h / g shared "
                             "by the nodes on each node's 9 features")
    embed_dim: int = Field(32, ge=1, description="k: embedding size of the Deep Sets pooling")
    predictor_hidden: int = Field(64, ge=1, description="hidden units of h and g")
    tau_target: float = Field(0.5, gt=0, description="Gumbel-sigmoid temperature of the target samples")

    # --- DP-DAG graph sampler
    tau_perm: float = Field(1.0, gt=0, description="SoftSort temperature")
    tau_edge: float = Field(1.0, gt=0, description="edge Gumbel-sigmoid temperature")
    edge_logit_init: float = Field(0.0, description="initial edge logits")
    edge_prior: float = Field(0.1, gt=0, lt=1, description="p0 of the Bernoulli edge prior of the KL term")

    # --- objective (eq. 7) and optimisation
    lambda_I: float = Field(0.3, ge=0, description="weight of the target sparsity term (mean of sigmoid(zeta)); "
                                            "0.05 let the per-task last layer explain every node (README)")
    lambda_H: float = Field(0.1, ge=0, description="weight of the HSIC residual-independence term")
    lambda_G: float = Field(0.1, ge=0, description="with graph_objective='weighted': weight of the edge KL term (mean "
                                             "KL per edge logit); 0.3 pulled every edge to the prior, 0.01 left "
                                             "too many edges")
    graph_objective: Literal["weighted", "elbo"] = Field(
        "weighted", description="weight of the graph terms: lambda_G x the mean edge KL (eq. 7), or the negative "
                                "ELBO's own scale (one nat of KL per n_rows x d likelihood terms; lambda_G unused)")
    edge_occam: Literal["none", "bic"] = Field(
        "bic", description="bic: log(n_rows) / 2 nats per edge of each DAG sample, the Laplace / BIC Occam factor of "
                            "an edge's mechanism parameter that the point-estimated likelihood lacks (weighted like "
                            "the KL): an edge must improve the likelihood by more than that to be kept")
    occam_warmup: float = Field(0.5, ge=0, le=1, description="fraction of the steps over which the Occam term "
                                "grows linearly from 0 (the mechanisms first learn to use their inputs: from step 0 "
                                "it switched off true edges before their MLP inputs were fitted)")
    steps: int = Field(300, ge=1, description="outer Adam steps (one step = all meta-training experiments)")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate of the mechanisms and the target predictor")
    lr_graph: float = Field(5e-2, gt=0, description="Adam learning rate of the DP-DAG parameters")
    query_batch: int | None = Field(32, ge=2, description="query rows drawn per experiment and step (None: all)")
    n_hsic: int = Field(32, ge=4, description="query rows of each experiment entering the HSIC term")
    n_graph_mc: int = Field(4, ge=1, description="DAG samples per outer step (averaged; the ordering's "
                                                  "score-function baseline is leave-one-out over them)")
    n_eval_graphs: int = Field(32, ge=1, description="DAG samples averaged in target probabilities")
    n_edge_mc: int = Field(2000, ge=1, description="orderings sampled for the edge marginals")
    seed: int = Field(0, ge=0)
    device: str = "cpu"
