"""MACE-TNP (arXiv 2507.05526): model, training examples, answer and presets, side by side.

* :mod:`.model` - the transformer neural process and its config / presets;
* :mod:`.batching` - one training example per prior task;
* :mod:`.answer` - what a trained model answers about one dataset (an interventional predictor).
"""
from pipeline_lib.models.mace_tnp.answer import MaceTNPAnswer, predict
from pipeline_lib.models.mace_tnp.batching import mace_tnp_batch, make_batch
from pipeline_lib.models.mace_tnp.model import PRESETS, MaceTNP, MaceTNPConfig, mace_tnp_loss, preset

__all__ = ["PRESETS", "MaceTNP", "MaceTNPAnswer", "MaceTNPConfig", "mace_tnp_batch", "mace_tnp_loss", "make_batch",
           "predict", "preset"]
