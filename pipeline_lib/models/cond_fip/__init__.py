"""Cond-FiP (Mahajan et al. 2024): dataset + graph -> the mechanisms of that SCM.

* :mod:`.model` - :class:`CondFiP` (dataset encoder, dataset embedding, conditional
  fixed-point decoder), :class:`CondFiPConfig`, :func:`cond_fip_loss`.
* :mod:`.layers` - graph-masked attention with a null key, adaptive-LayerNorm blocks.
* :mod:`.batching` - :func:`make_batch` / :func:`cond_fip_batch` (context / target row split).
* :mod:`.answer` - :func:`predict` -> :class:`CondFiPAnswer` (SCM generator + calibrated-Gaussian interventional density).
* :mod:`.presets` - :data:`PRESETS` (``default``, ``cpu-small``, ``tiny``).
"""

from pipeline_lib.models.cond_fip.answer import CondFiPAnswer, predict
from pipeline_lib.posterior import SampledInterventional
from pipeline_lib.models.cond_fip.batching import cond_fip_batch, make_batch
from pipeline_lib.models.cond_fip.model import CondFiP, CondFiPConfig, DatasetEmbedding, cond_fip_loss
from pipeline_lib.models.cond_fip.presets import PRESETS, preset

__all__ = ["PRESETS", "CondFiP", "CondFiPAnswer", "CondFiPConfig", "DatasetEmbedding", "SampledInterventional",
           "cond_fip_batch", "cond_fip_loss", "make_batch", "predict", "preset"]
