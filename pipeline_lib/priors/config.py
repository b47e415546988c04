"""``PriorConfig``: the declarative description of a Bayesian causal model (BCM) prior.

A prior is a distribution over tasks. One task is drawn as

    d_t       ~ Uniform{n_nodes_min, ..., n_nodes_max}         (number of real nodes)
    G_t       ~ p(G | graph)                                   (a DAG on d_t nodes)
    theta_t   ~ p(theta | G_t, mechanism)                      (mechanism parameters)
    sigma_tj  ~ Uniform[noise.scale_min, noise.scale_max]      (noise std of node j)
    x^(m)     = ancestral sample of  x_j = f_j(x_pa(j)) + sigma_tj * eps_j   (additive noise)
    regimes k = 1..K: targets I_k, hard values or soft mechanism changes, fresh noise.

Everything that changes the sampled bytes is a field of this model, so that the
``content_hash`` (sha256 of the canonical JSON plus ``GENERATOR_VERSION``) identifies a
stored dataset: same config => same hash => byte-identical arrays.

The models are pydantic v2 ``BaseModel``s (``extra="forbid"``, so a typo in a YAML key is an
error, not a silently ignored field); Prefect renders them as UI forms.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .perturbation import DrugPerturbationConfig, check_drug_prior

#: Bumped whenever a change of the sampling code changes the bytes drawn for a config.
#: It is part of ``PriorConfig.content_hash`` so stale stores are never reused.
GENERATOR_VERSION = "1"

#: Fields excluded from the content hash: they describe the config to humans and change
#: neither the sampled bytes nor the stored layout.
_PRESENTATION_FIELDS = frozenset({"description"})


class PriorConfigError(ValueError):
    """An invalid prior configuration; the message names the offending field."""


#: A prior's name becomes a path component of its store (``<root>/priors/<name>-<hash12>.zarr``):
#: letters, digits and ``-_.``, no leading dot (hidden files, ``.``/``..``) and no ``..`` inside.
_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


class _Strict(BaseModel):
    # allow_inf_nan=False: a NaN slips through every `x < bound` check below (all comparisons
    # with NaN are False) and would yield a "complete" store full of NaN; inf likewise.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class GraphConfig(_Strict):
    """Prior over DAGs.

    Nodes are generated in a *canonical* topological order (parents have smaller indices)
    and the labels of the real nodes are then permuted uniformly at random, so no method can
    read the causal order off the column index. Padded nodes (``d_t < d_max``) always sit in
    the last columns, with no edges and ``node_mask`` False.

    - ``erdos_renyi``: every pair i < j (canonical order) is an edge i -> j independently
      with probability ``p = 2 * expected_parents / (d_t - 1)``, so the expected number of
      edges is ``p * d_t (d_t - 1) / 2 = expected_parents * d_t`` and the mean number of
      parents per node is ``expected_parents``. ``p <= 1`` requires
      ``expected_parents <= (d_t - 1) / 2`` (the complete DAG).
    - ``scale_free``: Barabasi-Albert preferential attachment: node k attaches to
      ``min(attach, k)`` earlier nodes chosen without replacement with probability
      proportional to (degree + 1). ``direction="out"`` orients old -> new (hubs have many
      children, out-degree hubs); ``direction="in"`` orients new -> old (hubs have many
      parents, in-degree hubs); ``"both"``: each task draws one of the two uniformly.
    - ``fully_connected``: the complete DAG, all i < j edges (only the order is random).
    - ``watts_strogatz``: a small world: a periodic lattice of a dimension drawn from
      ``lattice_dims`` (1: a ring, each node joined to its ``attach`` nearest neighbours on
      each side, mean ``attach`` parents), each edge's far end rewired with probability
      ``rewire``, sites beyond ``n`` dropped at random; oriented by a uniformly random order.
    - ``sbm``: stochastic block model: a number of groups drawn from ``sbm_blocks`` (random
      cuts of a random order); the edge probability across
      groups is ``sbm_damping`` times the one inside a group, set for ``expected_parents``
      mean parents (fewer when the inside probability reaches 1); oriented by a uniformly
      random order.
    - ``mixture``: each task draws one law of ``mix`` uniformly (their parameters above).

    ``watts_strogatz`` and ``sbm`` are the Cond-FiP paper's out-of-distribution graph laws
    (``graphs.py`` gives the definitions and the simplification).

    Give either ``n_nodes`` (fixed size) or both ``n_nodes_min`` and ``n_nodes_max``
    (``d_max = n_nodes_max``; tasks are padded to ``d_max``).
    """

    kind: Literal["erdos_renyi", "scale_free", "fully_connected", "watts_strogatz", "sbm", "mixture"] = "erdos_renyi"
    n_nodes: int | None = None
    n_nodes_min: int | None = None
    n_nodes_max: int | None = None
    expected_parents: float = 1.0
    attach: int = 2
    direction: Literal["in", "out", "both"] = "in"
    # Fields of the Cond-FiP out-of-distribution graph laws, each omitted from the JSON (and
    # the content hash) at its default, so existing priors keep hash and bytes.
    #: ``watts_strogatz``: probability that a lattice edge's far end is rewired, lattice dimensions (one per task)
    rewire: float = Field(0.3, exclude_if=lambda v: v == 0.3)
    lattice_dims: list[int] = Field([1], exclude_if=lambda v: v == [1])
    #: ``sbm``: numbers of groups (one per task) and the across / inside edge-probability ratio
    sbm_blocks: list[int] = Field([5], exclude_if=lambda v: v == [5])
    sbm_damping: float = Field(0.1, exclude_if=lambda v: v == 0.1)
    #: ``mixture``: the laws a task draws from, uniformly
    mix: list[Literal["erdos_renyi", "scale_free", "fully_connected", "watts_strogatz", "sbm"]] | None = Field(
        None, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _check(self) -> "GraphConfig":
        ranged = self.n_nodes_min is not None or self.n_nodes_max is not None
        if self.n_nodes is not None and ranged:
            raise PriorConfigError(
                "graph.n_nodes: give either n_nodes or (n_nodes_min, n_nodes_max), not both"
            )
        if self.n_nodes is None and not ranged:
            raise PriorConfigError("graph.n_nodes: missing (or give n_nodes_min and n_nodes_max)")
        if ranged and (self.n_nodes_min is None or self.n_nodes_max is None):
            raise PriorConfigError("graph.n_nodes_min/n_nodes_max: give both ends of the range")
        if self.d_min < 2:
            field = "graph.n_nodes" if self.n_nodes is not None else "graph.n_nodes_min"
            raise PriorConfigError(f"{field}={self.d_min}: a task needs at least 2 nodes")
        if self.d_max < self.d_min:
            raise PriorConfigError(
                f"graph.n_nodes_max={self.d_max} is smaller than graph.n_nodes_min={self.d_min}"
            )
        if self.expected_parents < 0:
            raise PriorConfigError(f"graph.expected_parents={self.expected_parents} is negative")
        if self.kind == "erdos_renyi" or (self.kind == "mixture" and "erdos_renyi" in (self.mix or [])):
            bound = (self.d_min - 1) / 2
            if self.expected_parents > bound:
                raise PriorConfigError(
                    f"graph.expected_parents={self.expected_parents} exceeds (n_nodes - 1) / 2 = "
                    f"{bound:g} for n_nodes={self.d_min}: the mean number of parents per node "
                    "of a DAG is at most that (the complete DAG)"
                )
        if self.attach < 1:
            raise PriorConfigError(f"graph.attach={self.attach} must be >= 1")
        laws = self.mix if self.kind == "mixture" else [self.kind]
        if self.kind == "mixture" and not self.mix:
            raise PriorConfigError("graph.mix: kind 'mixture' needs a non-empty list of graph kinds")
        if self.kind != "mixture" and self.mix is not None:
            raise PriorConfigError(f"graph.mix: only used with kind 'mixture' (kind is {self.kind!r})")
        if "watts_strogatz" in laws and 1 in self.lattice_dims and self.d_min <= 2 * self.attach:
            raise PriorConfigError(
                f"graph.attach={self.attach}: a Watts-Strogatz ring lattice with {self.attach} neighbours per side "
                f"needs more than {2 * self.attach} nodes (n_nodes {self.d_min})")
        if not 0.0 <= self.rewire <= 1.0:
            raise PriorConfigError(f"graph.rewire={self.rewire} must be a probability in [0, 1]")
        if not self.sbm_blocks or min(self.sbm_blocks) < 1:
            raise PriorConfigError(f"graph.sbm_blocks={self.sbm_blocks}: need a non-empty list of counts >= 1")
        if not self.lattice_dims or not all(1 <= k <= 4 for k in self.lattice_dims):
            raise PriorConfigError(f"graph.lattice_dims={self.lattice_dims}: need a non-empty list of dimensions in 1..4")
        if not 0.0 <= self.sbm_damping <= 1.0:
            raise PriorConfigError(f"graph.sbm_damping={self.sbm_damping} must be in [0, 1]")
        return self

    @property
    def d_min(self) -> int:
        return int(self.n_nodes if self.n_nodes is not None else self.n_nodes_min)  # type: ignore[arg-type]

    @property
    def d_max(self) -> int:
        return int(self.n_nodes if self.n_nodes is not None else self.n_nodes_max)  # type: ignore[arg-type]


class GRNConfig(_Strict):
    """SERGIO-style gene regulatory network simulator (``mechanism.kind = "grn"``); the
    equations are in ``pipeline_lib/priors/grn.py``. Defaults follow SERGIO's usual choices
    (Hill coefficient 2, decay 0.8, noise amplitude 1, strengths U[1, 5], basal U[1, 3])."""

    n_cell_types: int = 3
    k_min: float = 1.0
    k_max: float = 5.0
    p_activation: float = 0.5
    basal_min: float = 1.0
    basal_max: float = 3.0
    hill: float = 2.0
    decay: float = 0.8
    noise_q: float = 1.0
    dt: float = 0.05
    n_steps: int = 100
    technical_noise: bool = True
    outlier_prob: float = 0.01
    outlier_mean: float = 0.8
    outlier_sigma: float = 1.0
    library_size_sigma: float = 0.3
    dropout_shape: float = 8.0
    dropout_percentile: float = 45.0

    @model_validator(mode="after")
    def _check(self) -> "GRNConfig":
        for field in ("n_cell_types", "n_steps"):
            if getattr(self, field) < 1:
                raise PriorConfigError(f"mechanism.grn.{field}={getattr(self, field)} must be >= 1")
        for field in ("hill", "decay", "dt"):
            if getattr(self, field) <= 0:
                raise PriorConfigError(f"mechanism.grn.{field}={getattr(self, field)} must be > 0")
        for field in ("noise_q", "outlier_sigma", "library_size_sigma", "dropout_shape", "basal_min", "k_min"):
            if getattr(self, field) < 0:
                raise PriorConfigError(f"mechanism.grn.{field}={getattr(self, field)} is negative")
        if self.k_max < self.k_min or self.basal_max < self.basal_min:
            raise PriorConfigError("mechanism.grn.k_max/basal_max: each upper bound must be >= its lower bound")
        if not 0 <= self.p_activation <= 1 or not 0 <= self.outlier_prob <= 1:
            raise PriorConfigError("mechanism.grn.p_activation/outlier_prob: probabilities must lie in [0, 1]")
        if not 0 <= self.dropout_percentile <= 100:
            raise PriorConfigError(
                f"mechanism.grn.dropout_percentile={self.dropout_percentile} must lie in [0, 100]"
            )
        if self.decay * self.dt >= 1:
            raise PriorConfigError(
                f"mechanism.grn.dt={self.dt}: decay * dt must be < 1 for a stable Euler-Maruyama step"
            )
        return self


class MechanismConfig(_Strict):
    """Prior over the mechanisms f_j (additive noise: x_j = f_j(x_pa(j)) + noise_j).

    Root nodes (no parents) have f_j = 0: they are their noise.

    - ``linear``: f_j(x) = sum_i W_ij x_i, |W_ij| ~ Uniform[w_min, w_max], sign +-1 with
      probability 1/2 each.
    - ``nn``: a random one-hidden-layer MLP of the parents,
      f_j(x) = v_j^T act(U_j^T x_pa + c_j) with U_j entries ~ N(0, 1/|pa(j)|),
      c_j ~ N(0, 1), v_j ~ N(0, nn_output_scale^2 / hidden). Fresh weights per node.
    - ``gp``: a draw from a zero-mean GP with RBF kernel
      k(x, x') = gp_amplitude^2 exp(-|x - x'|^2 / (2 l_j^2)), approximated by random Fourier
      features: f_j(x) = gp_amplitude sqrt(2/F) sum_f a_f cos(omega_f^T x_pa / l_j + b_f),
      omega_f ~ N(0, I), b_f ~ U[0, 2 pi], a_f ~ N(0, 1), F = ``n_features``;
      lengthscale l_j ~ Uniform[lengthscale_min, lengthscale_max] per node (and the
      amplitude ~ Uniform[gp_amplitude, gp_amplitude_max] per node where that is set).
    - ``bge``: a linear-Gaussian SCM x_j = mu_j + sum_i W_ij x_i + sigma_j eps_j whose
      parameters (W, mu, sigma) are drawn from the Normal-Wishart prior behind the BGe score
      (``pipeline_lib.baselines.bge.sample_bge_parameters`` with ``alpha_mu``, ``alpha_w``).
      The noise std comes from that draw, so ``noise.kind`` must be ``gaussian`` and
      ``noise.scale_*`` are unused.
    - ``grn``: a SERGIO-style gene regulatory network (``grn`` sub-config, ``grn.py``):
      Hill-kinetics production, chemical Langevin dynamics, optional technical noise; no
      additive noise (``noise`` is unused, ``noise_obs`` is NaN), hard interventions are
      knockouts and soft ones rescale production.
    """

    kind: Literal["linear", "nn", "gp", "bge", "grn"] = "linear"
    w_min: float = 0.5
    w_max: float = 2.0
    hidden: int = 16
    activation: Literal["relu", "tanh", "leaky_relu", "sigmoid"] = "relu"
    nn_output_scale: float = 2.0
    n_features: int = 64
    lengthscale_min: float = 0.5
    lengthscale_max: float = 2.0
    gp_amplitude: float = 1.0
    alpha_mu: float = 1.0
    alpha_w: float | None = None
    grn: GRNConfig = Field(default_factory=GRNConfig)
    # Fields added for the MACE-TNP paper priors (issue 13). Each is omitted from the JSON
    # (and so from the content hash) at its default, so existing priors keep hash and bytes.
    #: hidden layers of the ``nn`` MLP; layers after the first: W ~ N(0, 1/H), bias ~ N(0, nn_bias_scale^2)
    nn_layers: int = Field(1, exclude_if=lambda v: v == 1)
    #: std of the ``nn`` first-layer weights U (None: 1/sqrt(|pa(j)|)); 1.0 = N(0, 1) weights, unscaled
    nn_input_scale: float | None = Field(None, exclude_if=lambda v: v is None)
    #: std of the ``nn`` hidden biases c
    nn_bias_scale: float = Field(1.0, exclude_if=lambda v: v == 1.0)
    #: ``gp`` plus a linear kernel: f_j += gp_linear_scale * sum_i w_ij x_i, w_ij ~ N(0, 1)
    #: (kernel gp_linear_scale^2 x^T x': unbounded, effects keep growing outside the data)
    gp_linear_scale: float = Field(0.0, exclude_if=lambda v: v == 0.0)
    #: ``gp``: amplitude per node ~ Uniform[gp_amplitude, gp_amplitude_max] (None: gp_amplitude
    #: for every node); the Cond-FiP paper's output scales are ranges (added for issue 15)
    gp_amplitude_max: float | None = Field(None, exclude_if=lambda v: v is None)
    #: standardise every node inside the SCM, in causal order, by the mean / std of its own
    #: observational values (``mechanisms.standardize_nodes``): children see standardised
    #: parents and interventions act on standardised values ("standardise before the
    #: intervention"). False: the SCM is sampled raw and the dataset standardised after
    #: (``PriorConfig.standardize``, "after the intervention")
    node_standardize: bool = Field(False, exclude_if=lambda v: v is False)

    @model_validator(mode="after")
    def _check(self) -> "MechanismConfig":
        if self.nn_layers < 1:
            raise PriorConfigError(f"mechanism.nn_layers={self.nn_layers} must be >= 1")
        if self.nn_input_scale is not None and self.nn_input_scale <= 0:
            raise PriorConfigError(f"mechanism.nn_input_scale={self.nn_input_scale} must be > 0 (or null)")
        for field in ("nn_bias_scale", "gp_linear_scale"):
            if getattr(self, field) < 0:
                raise PriorConfigError(f"mechanism.{field}={getattr(self, field)} is negative")
        if self.gp_amplitude_max is not None and self.gp_amplitude_max < self.gp_amplitude:
            raise PriorConfigError(
                f"mechanism.gp_amplitude_max={self.gp_amplitude_max} is below gp_amplitude={self.gp_amplitude}")
        if self.node_standardize and self.kind == "grn":
            raise PriorConfigError("mechanism.node_standardize=True: the grn simulator has no additive mechanism to standardise")
        if self.w_min < 0 or self.w_max < self.w_min:
            raise PriorConfigError(
                f"mechanism.w_min/w_max=({self.w_min}, {self.w_max}): need 0 <= w_min <= w_max"
            )
        if self.hidden < 1:
            raise PriorConfigError(f"mechanism.hidden={self.hidden} must be >= 1")
        if self.n_features < 1:
            raise PriorConfigError(f"mechanism.n_features={self.n_features} must be >= 1")
        if self.lengthscale_min <= 0 or self.lengthscale_max < self.lengthscale_min:
            raise PriorConfigError(
                f"mechanism.lengthscale_min/max=({self.lengthscale_min}, {self.lengthscale_max}):"
                " need 0 < lengthscale_min <= lengthscale_max"
            )
        if self.alpha_mu <= 0:
            raise PriorConfigError(f"mechanism.alpha_mu={self.alpha_mu} must be > 0")
        return self


class NoiseConfig(_Strict):
    """Exogenous noise eps_j = s_j * u_j with u_j of zero mean and unit variance:

    - ``gaussian``: u ~ N(0, 1);
    - ``laplace``: u ~ Laplace(0, 1/sqrt(2)) (variance 2 b^2 = 1);
    - ``uniform``: u ~ Uniform[-sqrt(3), sqrt(3)] (variance 1);

    so ``s_j ~ Uniform[scale_min, scale_max]`` (per task and node) is the noise *std*.
    """

    kind: Literal["gaussian", "laplace", "uniform"] = "gaussian"
    scale_min: float = 0.5
    scale_max: float = 1.0

    @model_validator(mode="after")
    def _check(self) -> "NoiseConfig":
        if self.scale_min <= 0 or self.scale_max < self.scale_min:
            raise PriorConfigError(
                f"noise.scale_min/scale_max=({self.scale_min}, {self.scale_max}): "
                "need 0 < scale_min <= scale_max"
            )
        return self


class InterventionConfig(_Strict):
    """K = ``n_regimes`` interventional regimes per task, each with fresh noise.

    Targets: regime k intervenes on m_k ~ Uniform{1, ..., min(max_targets, d_t)} distinct
    real nodes, uniformly at random. With ``distinct_targets`` and ``max_targets == 1``
    the single targets of the K regimes are distinct while K <= d_t (a random permutation
    of the nodes, cycled if K > d_t), e.g. K = 3 regimes on 3 nodes intervene each node once.

    Values are relative to the task's observational scale: with mean_j, std_j the empirical
    mean and std of X_j over the task's ``x_obs``, a draw z is
    ``z ~ N(0, 1)`` (``value_dist="gaussian"``) or ``z = sign * Uniform[value_low, value_high]``
    with a fair sign (``value_dist="uniform_sign"``, keeps values away from the mean).
    ``value_dist="beyond_range"`` draws z as ``uniform_sign`` but starts from the edge of the
    observed range instead of the mean: ``a_j = max_j + value_scale * std_j * z`` for z > 0,
    ``min_j + value_scale * std_j * z`` for z < 0 (max_j, min_j over the task's ``x_obs``),
    so every hard value lies outside the observational range (the paper priors of issue 13).

    - ``hard``: do(X_j = a_j), a_j = mean_j + value_scale * std_j * z, the same constant for
      all samples of the regime; stored in ``int_values``.
    - ``soft``: the mechanism of a target is replaced by
      x_j = r_j f_j(x_pa(j)) + shift_j + noise_j with r_j ~ Uniform[soft_scale_min,
      soft_scale_max] and shift_j = value_scale * std_j * z; ``int_values`` stays NaN.

    For ``mechanism.kind="grn"`` the values above are unused: hard = knockout (x_j = 0, raw
    units), soft = production of the target times r_j.

    ``targets_known`` is metadata for the methods (MetaCaDI/BaCaDI-style tasks hide the
    targets); the stored ``int_targets`` are the truth either way.

    Perturbation features (GIM), if ``perturbation_dim = p > 0``: per task a random map
    M ~ N(0, 1)^(d x p) is drawn once and shared by the task's regimes;
    ``perturbation[k] = I_k^T M + perturbation_noise * N(0, I_p)`` with I_k the target
    indicator vector (in the task's node labels).
    """

    n_regimes: int = 0
    kind: Literal["hard", "soft"] = "hard"
    max_targets: int = 1
    distinct_targets: bool = True
    targets_known: bool = True
    value_dist: Literal["gaussian", "uniform_sign", "beyond_range"] = "gaussian"
    value_scale: float = 1.0
    value_low: float = 1.0
    value_high: float = 2.0
    soft_scale_min: float = 0.5
    soft_scale_max: float = 1.5
    perturbation_dim: int = 0
    perturbation_noise: float = 0.1
    #: drug x dose experiments whose features determine the targets (GIM, ``perturbation.py``);
    #: omitted from the JSON when unset, so the hashes of other priors do not change
    drugs: DrugPerturbationConfig | None = Field(None, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _check(self) -> "InterventionConfig":
        if self.n_regimes < 0:
            raise PriorConfigError(f"interventions.n_regimes={self.n_regimes} is negative")
        if self.max_targets < 1:
            raise PriorConfigError(f"interventions.max_targets={self.max_targets} must be >= 1")
        if self.value_low < 0 or self.value_high < self.value_low:
            raise PriorConfigError(
                f"interventions.value_low/value_high=({self.value_low}, {self.value_high}): "
                "need 0 <= value_low <= value_high"
            )
        if self.soft_scale_max < self.soft_scale_min:
            raise PriorConfigError(
                f"interventions.soft_scale_min/max=({self.soft_scale_min}, {self.soft_scale_max}):"
                " need soft_scale_min <= soft_scale_max"
            )
        if self.perturbation_dim < 0:
            raise PriorConfigError(
                f"interventions.perturbation_dim={self.perturbation_dim} is negative"
            )
        if self.perturbation_noise < 0:
            raise PriorConfigError(
                f"interventions.perturbation_noise={self.perturbation_noise} is negative"
            )
        return self


class SplitsConfig(_Strict):
    """Number of tasks per split."""

    train: int = 1000
    val: int = 100
    test: int = 100

    @model_validator(mode="after")
    def _check(self) -> "SplitsConfig":
        for split in ("train", "val", "test"):
            if getattr(self, split) < 0:
                raise PriorConfigError(f"splits.{split}={getattr(self, split)} is negative")
        return self


#: Stable integer id of each split, part of every task's seed.
SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


class PriorConfig(_Strict):
    """A BCM prior: graph, mechanism, noise, interventions, sample sizes and splits.

    ``standardize``: if True, each task's x_obs, x_int and hard int_values are mapped by the
    same affine map x -> (x - obs_mean) / obs_std, with obs_mean, obs_std the per-task
    empirical mean and std (ddof=0) of x_obs per node; ``noise_obs`` is divided by obs_std
    (it stays zero-mean noise, now in the standardized units of its node).

    ``counterfactuals``: if True, also return ``x_cf: (T, K, n_obs, d)``, the counterfactual
    of every observational sample under every regime: the intervened SCM of regime k
    evaluated on the *same* exogenous noise that produced x_obs (Cond-FiP's counterfactual
    RMSE target). Standardized like x_obs.

    ``chunk_tasks`` is the storage chunk size along the task axis; it never changes the
    sampled bytes (each task has its own seed) but is part of the hash because it changes
    the layout of the store that the hash names.
    """

    name: str
    description: str = ""
    seed: int = 0
    graph: GraphConfig
    mechanism: MechanismConfig = Field(default_factory=MechanismConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    interventions: InterventionConfig = Field(default_factory=InterventionConfig)
    n_obs: int = 100
    n_int: int = 100
    standardize: bool = True
    counterfactuals: bool = False
    splits: SplitsConfig = Field(default_factory=SplitsConfig)
    chunk_tasks: int = 100

    @model_validator(mode="after")
    def _check(self) -> "PriorConfig":
        if not self.name:
            raise PriorConfigError("name: must be a non-empty string")
        if not _NAME_RE.fullmatch(self.name) or ".." in self.name:
            raise PriorConfigError(
                f"name={self.name!r}: must be a slug of at most 128 letters, digits and '-_.', "
                "not starting with '.' and without '..' (it names the store's folder)"
            )
        if self.seed < 0:
            raise PriorConfigError(f"seed={self.seed} is negative (SeedSequence needs >= 0)")
        if self.n_obs < 2:
            raise PriorConfigError(f"n_obs={self.n_obs} must be >= 2 (std of x_obs is needed)")
        if self.n_int < 0:
            raise PriorConfigError(f"n_int={self.n_int} is negative")
        if self.chunk_tasks < 1:
            raise PriorConfigError(f"chunk_tasks={self.chunk_tasks} must be >= 1")
        if self.interventions.max_targets > self.graph.d_min:
            raise PriorConfigError(
                f"interventions.max_targets={self.interventions.max_targets} exceeds the number "
                f"of nodes ({self.graph.d_min}, graph.n_nodes or graph.n_nodes_min)"
            )
        if self.mechanism.kind == "bge" and self.noise.kind != "gaussian":
            raise PriorConfigError(
                f"noise.kind={self.noise.kind!r}: mechanism.kind='bge' is linear-Gaussian, "
                "use noise.kind='gaussian'"
            )
        check_drug_prior(self)
        if self.mechanism.kind == "grn" and self.counterfactuals:
            raise PriorConfigError(
                "counterfactuals=True: mechanism.kind='grn' has no exogenous noise to hold fixed"
            )
        return self

    # ------------------------------------------------------------------ derived sizes
    @property
    def d_max(self) -> int:
        return self.graph.d_max

    def n_tasks(self, split: str) -> int:
        if split not in SPLIT_IDS:
            raise PriorConfigError(f"split={split!r}: expected one of {sorted(SPLIT_IDS)}")
        return int(getattr(self.splits, split))

    # ------------------------------------------------------------------ serialisation
    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def content_hash(self) -> str:
        """sha256 hex of the canonical JSON (minus presentation fields) + GENERATOR_VERSION."""
        payload = {
            k: v for k, v in self.model_dump(mode="json").items() if k not in _PRESENTATION_FIELDS
        }
        payload["__generator_version__"] = GENERATOR_VERSION
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PriorConfig":
        """Validate a plain dict; errors raise ``PriorConfigError`` naming the field."""
        if not isinstance(data, dict):
            raise PriorConfigError(f"prior config: expected a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise PriorConfigError(_format_validation_error(err)) from err

    @classmethod
    def from_json(cls, text: str) -> "PriorConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PriorConfig":
        import yaml  # lazily: pyyaml is a project dependency, only needed for files

        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(self.model_dump(mode="json"), fh, sort_keys=False)


def _format_validation_error(err: ValidationError) -> str:
    """One line per problem, each starting with the dotted field path."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<config>"
        msg = e["msg"]
        # our own PriorConfigError surfaces as "Value error, <msg>" already naming the field
        if msg.startswith("Value error, "):
            lines.append(msg[len("Value error, ") :])
        elif e["type"] == "finite_number":
            lines.append(f"{loc}={e['input']!r}: {msg}")
        else:
            lines.append(f"{loc}: {msg}")
    return "; ".join(lines)
