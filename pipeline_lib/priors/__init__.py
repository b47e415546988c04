"""Bayesian causal model priors: random DAGs, mechanisms, noise, interventions, task sampler.

Public API::

    from pipeline_lib.priors import (
        PriorConfig, PriorConfigError, GENERATOR_VERSION, sample_tasks, sample_split_range,
    )
"""

from .config import (
    GENERATOR_VERSION,
    SPLIT_IDS,
    GraphConfig,
    GRNConfig,
    InterventionConfig,
    MechanismConfig,
    NoiseConfig,
    PriorConfig,
    PriorConfigError,
    SplitsConfig,
)
from .sampler import sample_batch, sample_split_range, sample_tasks, split_seed

__all__ = [
    "GENERATOR_VERSION",
    "SPLIT_IDS",
    "GraphConfig",
    "GRNConfig",
    "InterventionConfig",
    "MechanismConfig",
    "NoiseConfig",
    "PriorConfig",
    "PriorConfigError",
    "SplitsConfig",
    "sample_batch",
    "sample_split_range",
    "sample_tasks",
    "split_seed",
]
