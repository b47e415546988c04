"""Method name -> model class, config class, loss and example builder.

One entry per amortized method; flows and tasks look methods up here by the
names used in configs, MLflow (``causalmeta-<method>``) and result tables.
Later issues add ``metacadi``, ``gim`` and ``cond-fip``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
from pydantic import BaseModel
from torch import nn

from pipeline_lib.models.mace_tnp import PRESETS as MACE_TNP_PRESETS
from pipeline_lib.models.mace_tnp import MaceTNP, MaceTNPConfig, mace_tnp_loss
from pipeline_lib.training.batching import mace_tnp_batch


@dataclass(frozen=True)
class MethodSpec:
    """How to build, train and feed one amortized method.

    ``make_batch(config)`` returns the ``(task dict, rng) -> batch`` function
    that turns prior tasks into this method's training examples.
    """

    name: str
    model_cls: type[nn.Module]
    config_cls: type[BaseModel]
    loss_fn: Callable
    make_batch: Callable[[BaseModel], Callable[[dict, np.random.Generator], dict]]
    presets: dict[str, dict]
    default_preset: str

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


def _mace_tnp_batcher(cfg: MaceTNPConfig):
    return partial(mace_tnp_batch, n_obs_min=cfg.n_obs_min, n_obs_max=cfg.n_obs_max, n_query=cfg.n_query,
                   log_uniform=cfg.n_obs_log_uniform, per_batch=cfg.n_obs_per_batch)


METHODS: dict[str, MethodSpec] = {
    "mace-tnp": MethodSpec(
        name="mace-tnp",
        model_cls=MaceTNP,
        config_cls=MaceTNPConfig,
        loss_fn=mace_tnp_loss,
        make_batch=_mace_tnp_batcher,
        presets={"default": {}, **MACE_TNP_PRESETS},
        default_preset="default",
    ),
}


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` registered under ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name]
