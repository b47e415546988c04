"""Amortized causal models and their shared layers.

* :mod:`layers` - MLP and pre-LN attention blocks with key padding masks.
* :mod:`mog` - univariate mixture-of-Gaussians distribution (density, CDF, quantiles, sampling).
* :mod:`mace_tnp` - MACE-TNP (arXiv 2507.05526).
* :mod:`registry` - method name -> model class, config, loss, example builder.
"""

from pipeline_lib.models.mace_tnp import MaceTNP, MaceTNPConfig
from pipeline_lib.models.mog import MixtureOfGaussians

__all__ = ["MaceTNP", "MaceTNPConfig", "MixtureOfGaussians"]
