"""Amortized methods by name: one :class:`MethodSpec` entry each.

Flows, tasks, the CLI and the Prefect forms look methods up here by the names used in
configs, MLflow (``causalmeta-<method>``) and result tables; nothing else names a method.
A new amortized method is its own module or package under ``pipeline_lib/models/`` (model,
config, loss, batch builder, answer, presets) plus one :func:`register_method` call below,
or from user code before a flow runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel
from torch import nn

from pipeline_lib.posterior import CAPABILITIES


class UnknownMethodError(ValueError):
    """A method name that no registry holds (the message lists the registered ones)."""


@dataclass(frozen=True)
class MethodSpec:
    """How to build, train, feed and query one amortized method.

    * ``model_cls(config)`` builds the network from a ``config_cls`` instance (a pydantic
      model: stored with the weights, so a registered model is rebuilt without pickles);
    * ``loss_fn(model, batch) -> loss | (loss, metrics)`` for the training loop;
    * ``make_batch(config)`` returns the ``(tasks, rng) -> batch`` function that turns prior
      tasks (arrays with a leading task axis) into this method's training examples;
    * ``predict(model, task) -> answer`` answers ONE task (arrays without the task axis) with
      an object implementing the capabilities of :mod:`pipeline_lib.posterior`;
    * ``answers``: the capability names the answer implements (shown by the CLI and forms).
    """

    name: str
    model_cls: type[nn.Module]
    config_cls: type[BaseModel]
    loss_fn: Callable
    make_batch: Callable[[BaseModel], Callable[[dict, np.random.Generator], dict]]
    predict: Callable[[nn.Module, dict], Any]
    presets: dict[str, dict] = field(default_factory=lambda: {"default": {}})
    default_preset: str = "default"
    answers: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        bad = [a for a in self.answers if a not in CAPABILITIES]
        if bad:
            raise ValueError(f"method {self.name!r}: unknown capabilities {bad}; known: {sorted(CAPABILITIES)}")
        if self.default_preset not in self.presets:
            raise ValueError(f"method {self.name!r}: default_preset {self.default_preset!r} is not in its presets")

    def config(self, preset: str | None = None, **overrides) -> BaseModel:
        name = preset or self.default_preset
        if name not in self.presets:
            raise ValueError(f"unknown preset {name!r} for {self.name}; choose from {sorted(self.presets)}")
        return self.config_cls(**{**self.presets[name], **overrides})

    def build(self, config: BaseModel | dict | None = None) -> nn.Module:
        if config is None:
            config = self.config()
        elif isinstance(config, dict):
            config = self.config_cls(**config)
        return self.model_cls(config)


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add ``spec`` to the registry (``replace=True`` to overwrite an entry of that name)."""
    if spec.name in METHODS and not replace:
        raise ValueError(f"method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` registered under ``name``."""
    if name not in METHODS:
        raise UnknownMethodError(f"method '{name}' is unknown; registered amortized methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _register_builtin() -> None:
    from pipeline_lib.models import mace_tnp

    register_method(MethodSpec(
        name="mace-tnp",
        model_cls=mace_tnp.MaceTNP,
        config_cls=mace_tnp.MaceTNPConfig,
        loss_fn=mace_tnp.mace_tnp_loss,
        make_batch=mace_tnp.make_batch,
        predict=mace_tnp.predict,
        presets={"default": {}, **mace_tnp.PRESETS},
        answers=("interventional",),
        description="MACE-TNP: model-averaged interventional distributions from D_obs (arXiv 2507.05526)",
    ))
    from pipeline_lib.models import cond_fip

    register_method(MethodSpec(
        name="cond-fip",
        model_cls=cond_fip.CondFiP,
        config_cls=cond_fip.CondFiPConfig,
        loss_fn=cond_fip.cond_fip_loss,
        make_batch=cond_fip.make_batch,
        predict=cond_fip.predict,
        presets=dict(cond_fip.PRESETS),
        answers=("generator", "interventional"),
        description="Cond-FiP: the SCM's mechanisms from data + graph (obs / do / counterfactual samples)",
    ))


_register_builtin()
