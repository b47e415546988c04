"""``GIMConfig``: the split of one system's experiments and every hyper-parameter of GIM."""
from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from pipeline_lib.models.dpdag import DPDAGOptions


class GIMInputError(ValueError):
    """Bad data for :func:`~pipeline_lib.models.gim.fit_gim`; names the array or field."""


class GIMConfig(DPDAGOptions):
    """Hyper-parameters of a GIM fit on one system (defaults: the CPU size of the benchmark)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # --- which experiments are seen
    n_test_regimes: int = Field(4, ge=0, description="the last regimes are held out (unseen perturbations); the "
                                                    "fit reads x_obs and regimes 0..K-n_test_regimes-1")
    standardize: bool = Field(True, description="standardize by the mean / std of x_obs (features by the seen "
                                                "experiments' mean / std)")

    # --- causal model: x_j = f_j(A_j * x) + sigma_j eps_j, eps ~ N(0, 1)
    mechanism: Literal["linear", "mlp"] = Field("linear", description="f_j linear or a per-node MLP")
    hidden: int = Field(16, ge=1, description="hidden units of the mechanism MLPs")
    layers: int = Field(1, ge=1, description="hidden layers of the mechanism MLPs")

    # --- phi: gamma -> target logits, shift, log-scale of the intervened mechanisms
    phi_hidden: int = Field(32, ge=1)
    phi_layers: int = Field(2, ge=1)
    intervene_scale: bool = Field(True, description="psi includes a log-scale of the intervened noise "
                                                    "(off: shift interventions only)")
    dose_feature: int | None = Field(
        None, description="index of the feature that is a log dose (None: phi is one MLP of all features). Set: "
                          "phi's MLP reads the other features (the drug) only and gives dose-independent target "
                          "logits, shift and log-scale amplitudes and a Hill response in the log dose, "
                          "sigmoid(n (log dose - log EC50)), shared by the drugs up to deviations, that multiplies "
                          "the amplitudes (model.py)")
    dose_prior_std: float = Field(0.3, gt=0, description="N(0, s^2) prior of a drug's deviation from the shared "
                                                         "Hill curve (slope before softplus, log EC50; standardized "
                                                         "log-dose units)")
    target_marginal: Literal["gumbel_mc", "exact"] = Field(
        "gumbel_mc", description="gumbel_mc: the paper's Monte Carlo over relaxed target samples; exact: the "
                                 "per-node Bernoulli mixture summed in closed form")
    n_target_mc: int = Field(8, ge=1, description="relaxed target samples per experiment and step")
    tau_target: float = Field(0.5, gt=0, description="Gumbel-sigmoid temperature of the target samples")

    # --- DP-DAG graph (the shared sampler of pipeline_lib.models.dpdag)
    tau_perm: float = Field(0.3, gt=0, description="SoftSort temperature")
    tau_edge: float = Field(0.5, gt=0, description="edge Gumbel-sigmoid temperature")
    edge_logit_init: float = Field(0.0)
    n_graph_mc: int = Field(4, ge=1, description="DAG samples per step (likelihood averaged over them)")
    n_edge_mc: int = Field(2000, ge=1, description="orderings sampled for the edge marginals")

    # --- priors / regularisers (log-prior terms in nats, see model.py)
    edge_prior: float = Field(0.1, gt=0, lt=1, description="p0 of the Bernoulli edge prior (KL of the DP-DAG)")
    lambda_G: float = Field(10.0, ge=0, description="nats per unit of the edge KL (summed over node pairs)")
    sparsity_warmup: float = Field(0.0, ge=0, le=1, description="fraction of the steps over which lambda_G ramps "
                                                                "linearly from 0 (edges learn before they are pruned)")
    lambda_I: float = Field(10.0, ge=0, description="nats per expected target (L1 of the target probabilities)")
    prior_scale: Literal["data", "batch"] = Field(
        "data", description="the log-prior terms are divided by the likelihood entries of the whole data (data: "
                            "the minibatch loss is an unbiased estimate of the MAP objective per entry), or of the "
                            "minibatch (batch: priors weigh N_data / N_batch times more)")
    target_logit_init: float = Field(-2.0, description="initial bias of the target logits (p ~ 0.12)")
    theta_prior_std: float = Field(1.0, gt=0, description="N(0, s^2) prior of the mechanism weights")
    phi_prior_std: float = Field(3.0, gt=0, description="N(0, s^2) prior of phi's weights")
    shift_prior_std: float = Field(3.0, gt=0, description="N(0, s^2) prior of the predicted shifts")
    log_scale_prior_std: float = Field(0.5, gt=0, description="N(0, s^2) prior of the predicted log-scales")

    # --- optimisation
    steps: int = Field(1500, ge=1)
    lr: float = Field(1e-2, gt=0, description="Adam learning rate of mechanisms and phi")
    lr_graph: float = Field(5e-2, gt=0, description="Adam learning rate of the DP-DAG")
    batch_rows: int | None = Field(64, ge=2, description="rows per experiment and step (None: all)")
    refit_steps: int = Field(0, ge=0, description="after the fit: steps refitting mechanisms, noise and phi on the "
                                                  "fixed MAP DAG; the generator then uses "
                                                  "mechanisms fitted to the DAG it generates with (0: off)")
    refit_init: Literal["continue", "fresh_phi", "fresh"] = Field(
        "continue", description="the refit starts from the fit's mechanisms, noise and phi (continue); from a "
                                "fresh phi and noise scales, the mechanisms kept (fresh_phi); or with the "
                                "mechanisms drawn afresh too (fresh): what was fitted to the pre-stage DAG, e.g. "
                                "always-on targets whose scales compensate wrong noise scales, does not carry over")
    prune: Literal["none", "bic", "bic+order"] = Field(
        "none", description="the graph stage after the fit, before the refit (models/gim/prune.py): none; bic: "
                            "drop MAP-DAG edges by per-node BIC backward elimination (shift targets per experiment "
                            "selected too; additive basis: linear, or linear + hinge for mlp); bic+order: first "
                            "refine the MAP ordering by local search on the summed per-node BIC, then take each "
                            "node's best parents among its predecessors. Dropped edges leave the graph posterior "
                            "too. Needs edge_space node")
    prune_penalty: float = Field(1.0, gt=0, description="multiplier of the BIC's (parameters x log rows) term")
    generation_targets: Literal["sample", "map"] = Field(
        "sample", description="targets of a generated perturbation: drawn per row from p(I | gamma) (sample), or "
                              "the most probable set, p > 1/2, for every row (map)")
    n_restarts: int = Field(3, ge=1, description="independent fits (seeds seed, seed + 1, ...); the one with the "
                                                "lowest mean loss over its last tenth of steps is kept (MAP)")
    seed: int = Field(0, ge=0)
    device: str = "cpu"
