"""Generic meta-training: batch sources, the training loop and checkpoints."""

from pipeline_lib.training.batching import ChunkedSource, PoolSource, StreamSource, prior_stream
from pipeline_lib.training.loop import TrainConfig, TrainResult, evaluate, lr_multiplier, train

__all__ = [
    "ChunkedSource",
    "PoolSource",
    "StreamSource",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "lr_multiplier",
    "prior_stream",
    "train",
]
