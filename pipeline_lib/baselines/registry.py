"""Per-dataset methods by name: one :class:`BaselineSpec` entry each.

A baseline fits ONE task restricted to its real nodes (:func:`pipeline_lib.taskdata.restrict`)
and answers with an object implementing the capabilities of :mod:`pipeline_lib.posterior`
(all built-in ones return a :class:`~pipeline_lib.baselines.base.CausalPosterior`). Each
entry names the arrays the method may see, following its paper's setting; the fit function
receives only those:

| name          | sees                                  | setting |
|---------------|---------------------------------------|---------|
| exact         | x_obs                                 | BGe, DAG enumeration (d <= 5): the MACE-TNP setting |
| dibs          | x_obs                                 | DiBS marginal (BGe) |
| dibs-joint    | x_obs                                 | DiBS joint (nonlinear Gaussian MLPs) |
| bacadi        | x_obs, x_int                          | targets UNKNOWN (inferred) |
| dcdi          | x_obs, x_int, int_targets             | targets KNOWN |
| dcdi-unknown  | x_obs, x_int                          | targets UNKNOWN (inferred) |
| empty-graph   | x_obs                                 | non-causal reference |
| oracle        | scm (the task's prior + seed), x_obs  | the true SCM: the floor of NLPID |
| anm-linear    | x_obs, adjacency                      | per-node linear ANM given the TRUE graph (Cond-FiP reference) |
| anm-mlp       | x_obs, adjacency                      | per-node MLP ANM given the TRUE graph (Cond-FiP reference) |
| anm-gp        | x_obs, adjacency                      | per-node GP-regression ANM given the TRUE graph (type-II ML; Cond-FiP reference) |
| metacadi      | x_obs, x_int                          | MetaCaDI fitted per system: regimes are its experiments, targets UNKNOWN |
| ut-igsp       | x_obs, x_int                          | UT-IGSP (optional package): one DAG, targets UNKNOWN (inferred) |
| gim           | x_obs, x_int, perturbation            | GIM per system: seen experiments + features, targets UNKNOWN; last regimes unseen |
| bacadi-star   | x_obs, x_int                          | BaCaDI* of the GIM paper: seen experiments as regimes, no features |
| gim-blackbox  | x_obs, x_int, perturbation            | conditional Gaussian features -> samples (no causal model) |
| dowhy-gcm     | x_obs, adjacency                      | DoWhy gcm (optional package): mechanisms auto-assigned per node given the TRUE graph |

``empty-graph`` is not a causal discovery method but the reference every method must clear:
the BGe posterior predictive when the graph is fixed to the empty DAG, so that
``p(x_i | do(X_j = a), D) = p(x_i | D)``, the Student-t predictive of ``X_i``'s observational
marginal, whatever the intervention. Its graph metrics are those of predicting no edge.

A config is validated once into its typed class at the edge (:func:`check_config`, used
by the CLI and the benchmark spec) and travels typed; a new baseline is its own module plus
one :func:`register_baseline` call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline_lib.models.registry import UnknownMethodError

__all__ = ["BASELINES", "BaselineConfigError", "BaselineSpec", "UnknownMethodError", "check_baseline",
           "check_config", "convergence_of", "fit_baseline", "get_baseline", "register_baseline"]

#: every array a per-dataset method may be given (the keys of ``restrict(task)``)
DATA_FIELDS = ("x_obs", "x_int", "int_targets", "int_values", "noise_obs", "x_cf", "perturbation", "adjacency", "scm")


class BaselineConfigError(ValueError):
    """A baseline config override that the method does not accept (names the field)."""


@dataclass(frozen=True)
class BaselineSpec:
    """One per-dataset method.

    ``fit(data, config) -> answer``: ``data`` holds exactly the arrays in ``sees`` (those the
    task has), ``config`` is a ``config_cls`` instance. ``fixed``: config fields that the entry
    sets itself (refused as user overrides). ``reference``: a non-causal reference row.
    ``convergence(answer) -> (converged, note)``: whether a fit converged (None: the method
    has no convergence test), see :func:`convergence_of`. ``max_nodes``: the most variables
    the method supports (None: no limit).
    """

    name: str
    config_cls: type[BaseModel]
    fit: Callable[[dict[str, np.ndarray], BaseModel], Any]
    sees: tuple[str, ...] = ("x_obs",)
    description: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)
    reference: bool = False
    convergence: Callable[[Any], tuple[bool | None, str]] | None = None
    max_nodes: int | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.sees if s not in DATA_FIELDS]
        if bad:
            raise ValueError(f"baseline {self.name!r}: unknown data fields {bad}; known: {', '.join(DATA_FIELDS)}")


_REGISTRY: dict[str, BaselineSpec] = {}


def register_baseline(spec: BaselineSpec, *, replace: bool = False) -> BaselineSpec:
    """Add ``spec`` to the registry (``replace=True`` to overwrite an entry of that name)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"baseline {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def baseline_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_baseline(name: str) -> BaselineSpec:
    if name not in _REGISTRY:
        raise UnknownMethodError(f"baseline '{name}' is unknown; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def check_baseline(name: str) -> str:
    return get_baseline(name).name


def check_config(name: str, config: BaseModel | dict[str, Any] | None) -> BaseModel:
    """Validate ``config`` overrides for baseline ``name`` into its typed config, before any fit.

    Raises :class:`BaselineConfigError` naming the field (unknown key, wrong type or range,
    or a field the method name sets), so that a malformed config fails at submission, not
    once per task. An instance of the config class passes through (its fixed fields checked).
    """
    spec = get_baseline(name)
    if isinstance(config, spec.config_cls):
        overrides = config.model_dump(exclude_unset=True)
    elif isinstance(config, BaseModel):
        raise BaselineConfigError(f"config of baseline '{name}': expected {spec.config_cls.__name__}, "
                                  f"got {type(config).__name__}")
    else:
        overrides = dict(config or {})
    clash = sorted(set(overrides) & set(spec.fixed))
    if clash and any(overrides[k] != spec.fixed[k] for k in clash):
        raise BaselineConfigError(
            f"config of baseline '{name}': field(s) {', '.join(clash)} are set by the method name "
            f"({', '.join(f'{k}={spec.fixed[k]!r}' for k in clash)})")
    try:
        return spec.config_cls(**{**overrides, **spec.fixed})
    except ValidationError as exc:
        problems = "; ".join(f"field '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors())
        raise BaselineConfigError(f"config of baseline '{name}': {problems}") from None


def overrides_of(name: str, config: BaseModel | dict[str, Any] | None) -> dict[str, Any]:
    """The user-set fields of a config (what result keys and records store), JSON-able."""
    typed = check_config(name, config)
    fixed = get_baseline(name).fixed
    return {k: v for k, v in typed.model_dump(mode="json", exclude_unset=True).items() if k not in fixed}


def fit_baseline(name: str, data: dict[str, np.ndarray], config: BaseModel | dict[str, Any] | None = None):
    """Fit baseline ``name`` on one task's data (real nodes only); returns its answer.

    The fit sees only the arrays its entry lists in ``sees``.
    """
    spec = get_baseline(name)
    cfg = check_config(name, config)
    return spec.fit({k: data[k] for k in spec.sees if k in data}, cfg)


def convergence_of(name: str, answer: Any) -> tuple[bool | None, str]:
    """``(converged, note)`` of baseline ``name``'s fitted ``answer``.

    True / False from the entry's ``convergence`` test; ``(None, ...)`` for an iterative method
    without one. Tables mark a False fit "not converged" instead of showing its graph as a result.
    """
    test = get_baseline(name).convergence
    if test is None:
        return None, "no convergence test for this method (fixed budget)"
    return test(answer)


def _closed_form(answer) -> tuple[bool, str]:
    return True, "closed form (no iterative fit)"


def _particles_acyclic(answer) -> tuple[bool, str]:
    """DiBS / BaCaDI: converged iff every SVGD particle's graph ends acyclic (the annealed
    acyclicity prior did its job); cyclic particles are dropped from the posterior."""
    parts = getattr(answer, "particles", None)
    if parts is None:
        return None, "no particles recorded"
    n, ok = len(parts.acyclic), int(np.sum(parts.acyclic))
    if ok == n:
        return True, f"all {n} particles acyclic"
    return False, f"not converged: {n - ok} of {n} particles cyclic (dropped); run more steps (--set steps=N)"


def _dcdi_converged(answer) -> tuple[bool, str]:
    return bool(answer.converged), answer.convergence


# --- the built-in entries ---------------------------------------------------------------


class ExactConfig(BaseModel):
    """Settings of the exact enumeration posterior (``ExactPosterior.fit`` keywords)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    edge_penalty: float = 0.0
    n_mc: int = Field(256, ge=1)
    seed: int = 0
    graph_prior: str = "uniform"
    edge_prob: float = Field(0.5, gt=0, lt=1)


class EmptyGraphConfig(BaseModel):
    """BGe hyperparameters of the empty-graph reference."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    alpha_mu: float = Field(1.0, gt=0)
    alpha_w: float | None = None
    mean_prior: float = 0.0


class OracleConfig(BaseModel):
    """Monte Carlo draws of the oracle's interventional densities."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n_mc: int = Field(20000, ge=10, description="draws for nonlinear mechanisms (linear-Gaussian is closed form)")


def _oracle(data: dict, cfg: OracleConfig):
    from pipeline_lib.priors import PriorConfig
    from pipeline_lib.priors.oracle import OracleError, TrueSCM

    ref = data.get("scm")
    if ref is None:
        raise OracleError("oracle: the task carries no reference to a generating prior (imported data has no "
                          "true SCM)")
    return TrueSCM(PriorConfig.model_validate_json(ref["config"]), ref["split"], int(ref["index"]), cfg.n_mc,
                   check_x_obs=data["x_obs"])


def _exact(data: dict, cfg: ExactConfig):
    from pipeline_lib.baselines.exact import ExactPosterior

    return ExactPosterior.fit(data["x_obs"], **cfg.model_dump())


def _empty_graph(data: dict, cfg: EmptyGraphConfig):
    from pipeline_lib.baselines.bge import BGe
    from pipeline_lib.baselines.exact import BGeMixturePosterior

    x = np.asarray(data["x_obs"], dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x_obs must have shape (N, d), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x_obs contains NaN or inf")
    d = x.shape[1]
    return BGeMixturePosterior(x, np.zeros((1, d, d), np.uint8), np.zeros(1), bge=BGe(**cfg.model_dump()))


def _dibs(data: dict, cfg):
    from pipeline_lib.baselines.dibs import fit_dibs_marginal

    return fit_dibs_marginal(data["x_obs"], cfg)


def _dibs_joint(data: dict, cfg):
    from pipeline_lib.baselines.dibs import fit_dibs_joint

    return fit_dibs_joint(data["x_obs"], cfg)


def _bacadi(data: dict, cfg):
    from pipeline_lib.baselines.bacadi import fit_bacadi

    return fit_bacadi(data["x_obs"], data["x_int"], cfg)


def _dcdi(data: dict, cfg):
    from pipeline_lib.baselines.dcdi import fit_dcdi

    return fit_dcdi(data["x_obs"], data["x_int"], data.get("int_targets"), cfg)


def _anm(data: dict, cfg):
    from pipeline_lib.baselines.anm import fit_anm

    return fit_anm(data, cfg)


def _gcm(data: dict, cfg):
    from pipeline_lib.baselines.dowhy_gcm import fit_gcm

    return fit_gcm(data, cfg)


def _metacadi(data: dict, cfg):
    from pipeline_lib.models.metacadi import fit_metacadi

    return fit_metacadi(data, cfg)


def _ut_igsp(data: dict, cfg):
    from pipeline_lib.baselines.ut_igsp import fit_ut_igsp

    return fit_ut_igsp(data["x_obs"], data["x_int"], cfg)


def _gim(data: dict, cfg):
    from pipeline_lib.models.gim import fit_gim

    return fit_gim(data, cfg)


def _bacadi_star(data: dict, cfg):
    from pipeline_lib.models.gim.baselines import fit_bacadi_star

    return fit_bacadi_star(data, cfg)


def _gim_blackbox(data: dict, cfg):
    from pipeline_lib.models.gim.baselines import fit_blackbox

    return fit_blackbox(data, cfg)


def _register_builtin() -> None:
    from pipeline_lib.baselines.anm import ANMConfig
    from pipeline_lib.baselines.dowhy_gcm import GCMConfig
    from pipeline_lib.models.gim import GIMConfig
    from pipeline_lib.models.gim.baselines import BlackBoxConfig, bacadi_star_config
    from pipeline_lib.models.metacadi import MetaCaDIConfig
    from pipeline_lib.baselines.ut_igsp import UTIGSPConfig
    from pipeline_lib.baselines.bacadi import BaCaDIConfig
    from pipeline_lib.baselines.dcdi import DCDIConfig
    from pipeline_lib.baselines.dibs import DiBSConfig

    for spec in (
        BaselineSpec("exact", ExactConfig, _exact, ("x_obs",),
                     "exact BGe posterior by DAG enumeration (d <= 5)", convergence=_closed_form, max_nodes=5),
        BaselineSpec("dibs", DiBSConfig, _dibs, ("x_obs",), "DiBS, marginal (BGe) likelihood, SVGD",
                     convergence=_particles_acyclic),
        BaselineSpec("dibs-joint", DiBSConfig, _dibs_joint, ("x_obs",),
                     "DiBS, joint nonlinear-Gaussian (MLP) likelihood, SVGD", convergence=_particles_acyclic),
        BaselineSpec("bacadi", BaCaDIConfig, _bacadi, ("x_obs", "x_int"),
                     "BaCaDI: DiBS with unknown intervention targets", convergence=_particles_acyclic),
        BaselineSpec("dcdi", DCDIConfig, _dcdi, ("x_obs", "x_int", "int_targets"),
                     "DCDI-G with known targets", fixed={"unknown_targets": False}, convergence=_dcdi_converged),
        BaselineSpec("dcdi-unknown", DCDIConfig, _dcdi, ("x_obs", "x_int"),
                     "DCDI-G with unknown targets", fixed={"unknown_targets": True}, convergence=_dcdi_converged),
        BaselineSpec("empty-graph", EmptyGraphConfig, _empty_graph, ("x_obs",),
                     "non-causal reference: the observational marginal", reference=True,
                     convergence=_closed_form),
        BaselineSpec("oracle", OracleConfig, _oracle, ("scm", "x_obs"),
                     "reference: the true SCM of the task (the NLPID floor)", reference=True,
                     convergence=_closed_form),
        BaselineSpec("anm-linear", ANMConfig, _anm, ("x_obs", "adjacency"),
                     "linear additive-noise SCM fitted per node given the TRUE graph", fixed={"kind": "linear"}),
        BaselineSpec("anm-mlp", ANMConfig, _anm, ("x_obs", "adjacency"),
                     "MLP additive-noise SCM fitted per node given the TRUE graph", fixed={"kind": "mlp"}),
        BaselineSpec("anm-gp", ANMConfig, _anm, ("x_obs", "adjacency"),
                     "GP-regression additive-noise SCM fitted per node given the TRUE graph (type-II ML)",
                     fixed={"kind": "gp"}),
        BaselineSpec("metacadi", MetaCaDIConfig, _metacadi, ("x_obs", "x_int"),
                     "MetaCaDI: shared DAG + unknown targets per experiment, closed-form adaptation "
                     "(per system; regimes = experiments, see models/metacadi)"),
        BaselineSpec("ut-igsp", UTIGSPConfig, _ut_igsp, ("x_obs", "x_int"),
                     "UT-IGSP (graphical-model-learning, optional install): one DAG + unknown targets per regime, "
                     "Gaussian CI / invariance tests"),
        BaselineSpec("gim", GIMConfig, _gim, ("x_obs", "x_int", "perturbation"),
                     "GIM: causal model + features -> interventions map, joint MAP (per system; the last "
                     "n_test_regimes regimes unseen, see models/gim)"),
        BaselineSpec("bacadi-star", bacadi_star_config(), _bacadi_star, ("x_obs", "x_int"),
                     "BaCaDI*: BaCaDI on the seen experiments as regimes, features unused (GIM comparison)"),
        BaselineSpec("gim-blackbox", BlackBoxConfig, _gim_blackbox, ("x_obs", "x_int", "perturbation"),
                     "black-box conditional Gaussian features -> samples (GIM comparison; no graph, no targets)",
                     reference=True),
        BaselineSpec("dowhy-gcm", GCMConfig, _gcm, ("x_obs", "adjacency"),
                     "DoWhy gcm (optional install): invertible SCM, mechanisms auto-assigned per node given the "
                     "TRUE graph (Cond-FiP reference)"),
    ):
        register_baseline(spec)


_register_builtin()


class _Names:
    """``BASELINES``: the registered names, always current (a view, not a snapshot)."""

    def __iter__(self):
        return iter(_REGISTRY)

    def __contains__(self, name: object) -> bool:
        return name in _REGISTRY

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return repr(tuple(_REGISTRY))


BASELINES = _Names()
