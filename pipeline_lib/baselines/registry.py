"""Baselines by name: which data each one sees, and how it is fitted.

All baselines take one task restricted to its real nodes (``pipeline_lib.evaluation.restrict``)
and return a :class:`~pipeline_lib.baselines.base.CausalPosterior`. What a method may see
follows its paper's setting:

| name          | data                                               |
|---------------|----------------------------------------------------|
| exact         | x_obs (the MACE-TNP setting: D_obs only), BGe, DAG enumeration (d <= 5) |
| dibs          | x_obs, DiBS marginal (BGe)                         |
| dibs-joint    | x_obs, DiBS joint (nonlinear Gaussian MLPs)        |
| bacadi        | x_obs + x_int, targets UNKNOWN (inferred)          |
| dcdi          | x_obs + x_int, targets KNOWN                       |
| dcdi-unknown  | x_obs + x_int, targets UNKNOWN (inferred)          |
| empty-graph   | x_obs, BGe under the empty graph only: a non-causal reference |

``empty-graph`` is not a causal discovery method but the floor every method must clear:
the BGe posterior predictive when the graph is fixed to the empty DAG, so that
``p(x_i | do(X_j = a), D) = p(x_i | D)``, the Student-t predictive of ``X_i``'s observational
marginal, whatever the intervention. Its graph metrics are those of predicting no edge. A
prior whose tables show it close to the exact posterior has interventional distributions
close to the observational marginals, and does not separate methods by NLPID.

``config`` holds keyword overrides of the method's pydantic config (e.g. ``{"steps": 300}``).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

BASELINES = ("exact", "dibs", "dibs-joint", "bacadi", "dcdi", "dcdi-unknown", "empty-graph")


class UnknownMethodError(ValueError):
    pass


class BaselineConfigError(ValueError):
    """A baseline config override that the method does not accept (names the field)."""


def _config_kwargs(name: str) -> tuple[str, ...]:
    """Config keys of the two methods without a pydantic config model: the keyword
    arguments of what ``config`` is passed to, less the data and object arguments."""
    import inspect

    if name == "exact":
        from pipeline_lib.baselines.exact import ExactPosterior

        params = inspect.signature(ExactPosterior.fit).parameters
        data_args = {"x_obs", "x_int", "int_targets", "node_mask", "bge"}
    else:  # empty-graph: BGe(**config)
        from pipeline_lib.baselines.bge import BGe

        params, data_args = inspect.signature(BGe).parameters, set()
    return tuple(p for p in params if p not in data_args)


def _config_model(name: str):
    if name in ("dibs", "dibs-joint"):
        from pipeline_lib.baselines.dibs import DiBSConfig

        return DiBSConfig
    if name == "bacadi":
        from pipeline_lib.baselines.bacadi import BaCaDIConfig

        return BaCaDIConfig
    if name in ("dcdi", "dcdi-unknown"):
        from pipeline_lib.baselines.dcdi import DCDIConfig

        return DCDIConfig
    return None


def check_config(name: str, config: dict[str, Any] | None) -> dict[str, Any]:
    """Validate ``config`` overrides for baseline ``name`` before any fit; returns them.

    Raises :class:`BaselineConfigError` naming the field (unknown key, wrong type or range),
    so that a malformed config fails at submission, not once per task.
    """
    from pydantic import ValidationError

    config = dict(config or {})
    check_baseline(name)
    if name in ("dcdi", "dcdi-unknown") and "unknown_targets" in config:
        raise BaselineConfigError(
            f"config of baseline '{name}': field 'unknown_targets' is set by the method name "
            "(dcdi: known targets, dcdi-unknown: inferred)"
        )
    model = _config_model(name)
    if model is None:
        allowed = _config_kwargs(name)
        bad = sorted(set(config) - set(allowed))
        if bad:
            raise BaselineConfigError(
                f"config of baseline '{name}': unknown field(s) {', '.join(bad)}; allowed: {', '.join(allowed)}"
            )
        return config
    try:
        model(**config)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors()
        )
        raise BaselineConfigError(f"config of baseline '{name}': {problems}") from None
    return config


def _exact(data: dict, config: dict[str, Any]):
    from pipeline_lib.baselines.exact import ExactPosterior

    return ExactPosterior.fit(data["x_obs"], **config)


def _empty_graph(data: dict, config: dict[str, Any]):
    from pipeline_lib.baselines.bge import BGe
    from pipeline_lib.baselines.exact import BGeMixturePosterior

    x = np.asarray(data["x_obs"], dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x_obs must have shape (N, d), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x_obs contains NaN or inf")
    d = x.shape[1]
    bge = BGe(**config)
    return BGeMixturePosterior(x, np.zeros((1, d, d), np.uint8), np.zeros(1), bge=bge)


def _dibs(data: dict, config: dict[str, Any]):
    from pipeline_lib.baselines.dibs import fit_dibs_marginal

    return fit_dibs_marginal(data["x_obs"], _config_model("dibs")(**config))


def _dibs_joint(data: dict, config: dict[str, Any]):
    from pipeline_lib.baselines.dibs import fit_dibs_joint

    return fit_dibs_joint(data["x_obs"], _config_model("dibs-joint")(**config))


def _bacadi(data: dict, config: dict[str, Any]):
    from pipeline_lib.baselines.bacadi import fit_bacadi

    return fit_bacadi(data["x_obs"], data["x_int"], _config_model("bacadi")(**config))


def _dcdi(data: dict, config: dict[str, Any], unknown: bool = False):
    from pipeline_lib.baselines.dcdi import fit_dcdi

    cfg = _config_model("dcdi")(**{**config, "unknown_targets": unknown})
    targets = None if unknown else data["int_targets"]
    return fit_dcdi(data["x_obs"], data["x_int"], targets, cfg)


_FIT: dict[str, Callable] = {
    "exact": _exact,
    "dibs": _dibs,
    "dibs-joint": _dibs_joint,
    "bacadi": _bacadi,
    "dcdi": _dcdi,
    "dcdi-unknown": lambda data, config: _dcdi(data, config, unknown=True),
    "empty-graph": _empty_graph,
}


def check_baseline(name: str) -> str:
    if name not in _FIT:
        raise UnknownMethodError(f"baseline '{name}' is unknown; choose one of {', '.join(BASELINES)}")
    return name


def fit_baseline(name: str, data: dict[str, np.ndarray], config: dict[str, Any] | None = None):
    """Fit baseline ``name`` on one task's data (real nodes only); returns its posterior."""
    return _FIT[check_baseline(name)](data, dict(config or {}))
