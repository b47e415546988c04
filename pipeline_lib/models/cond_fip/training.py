"""Cond-FiP training procedures on top of the shared loop (:func:`pipeline_lib.training.loop.train`).

* ``joint`` (:func:`pipeline_lib.models.cond_fip.cond_fip_loss`): one run, both loss terms; with
  ``detach_embedding`` the decoder loss does not reach the encoder.
* ``two-stage`` (:func:`train_two_stage`), the authors' procedure: stage 1 trains the encoder on
  noise prediction alone (the decoder is not run), stage 2 freezes the encoder (run without
  gradients, so AdamW never touches its parameters) and trains the dataset embedding and the
  decoder on the decoder loss. Stage 2 steps are cheaper than joint ones (no encoder backward).
* :class:`WeightEMA`: an exponential moving average of the weights, kept by a training
  callback, with the warm-up of the ``ema_pytorch`` package the authors use::

      beta_t = min(beta, 1 - (1 + t)^(-2/3)),   t = updates since the start,

  updated every ``every`` optimiser steps; :meth:`WeightEMA.copy_to` writes it into the model.
  Simplification: the average lives in memory only (a resumed run restarts it from the
  resumed weights).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

import torch

from pipeline_lib.models.cond_fip.model import CondFiP
from pipeline_lib.training.loop import TrainConfig, TrainResult, train


def stage_loss(model: CondFiP, batch: Mapping[str, torch.Tensor],
               stage: Literal["joint", "encoder", "decoder"] = "joint") -> tuple[torch.Tensor, dict[str, float]]:
    """:meth:`CondFiP.loss` of one training stage, in the shared loop's ``loss_fn`` form."""
    return model.loss(batch, stage=stage)


class WeightEMA:
    """Exponential moving average of ``model``'s floating-point state (module docstring).

    Use as a callback of :func:`~pipeline_lib.training.loop.train` (called once per step).
    """

    def __init__(self, model: torch.nn.Module, beta: float = 0.99, every: int = 10):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.model, self.beta, self.every = model, beta, every
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        self.steps = 0
        self.updates = 0

    def decay(self) -> float:
        """``beta_t`` of the next update."""
        return min(self.beta, 1.0 - (1.0 + self.updates) ** (-2.0 / 3.0))

    @torch.no_grad()
    def __call__(self, _record: Mapping | None = None) -> None:
        self.steps += 1
        if self.steps % self.every:
            return
        beta = self.decay()
        for key, value in self.model.state_dict().items():
            if key in self.shadow:
                self.shadow[key].mul_(beta).add_(value.detach().to(self.shadow[key].device), alpha=1.0 - beta)
        self.updates += 1

    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the averaged weights into ``model`` (non-float buffers stay)."""
        model.load_state_dict({**model.state_dict(), **self.shadow})


def train_two_stage(model: CondFiP, batch_source: Callable[[int], Mapping], encoder_cfg: TrainConfig,
                    decoder_cfg: TrainConfig, *, checkpoint_dir: str | Path | None = None,
                    val_source: Callable[[int], Mapping] | None = None, callbacks: Sequence[Callable] = (),
                    ema: tuple[float, int] | None = None, progress: bool = False) -> tuple[TrainResult, TrainResult]:
    """The authors' two-stage training (module docstring); each stage its own optimiser,
    schedule and checkpoints (``checkpoint_dir/encoder``, ``checkpoint_dir/decoder``).

    ``ema=(beta, every)``: keep a :class:`WeightEMA` in each stage and load it into the model at
    the stage's end (the authors freeze the encoder's EMA and evaluate the decoder's EMA).
    Returns the two stages' :class:`~pipeline_lib.training.loop.TrainResult`.
    """
    root = Path(checkpoint_dir) if checkpoint_dir is not None else None
    results = []
    for stage, cfg in (("encoder", encoder_cfg), ("decoder", decoder_cfg)):
        avg = WeightEMA(model, *ema) if ema is not None else None
        res = train(model, partial(stage_loss, stage=stage), batch_source, cfg,
                    checkpoint_dir=None if root is None else root / stage, val_source=val_source,
                    callbacks=[*callbacks, *([avg] if avg is not None else [])], progress=progress)
        if avg is not None and avg.updates:
            avg.copy_to(model)
        results.append(res)
    return results[0], results[1]
