"""What a trained MACE-TNP answers about one dataset: an interventional predictor.

All queries of a task go through ONE batched forward pass: the observational data is
shared, each query ``(j, a, i)`` is one row of the batch, and the mixture-of-Gaussians head
gives ``log q(x_i^m | do(X_j = a), D_obs)`` for every true sample ``m`` of that query.
Quantiles (for calibration) are the mixture's, by bisection on its CDF.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline_lib.posterior import DensityEstimate, InterventionalPredictor, check_query
from pipeline_lib.taskdata import restrict


class MaceTNPAnswer(InterventionalPredictor):
    """``q(x_i | do(X_j = a), D_obs)`` of a trained model for the dataset ``x_obs: (N, d)``.

    MACE-TNP predicts each outcome's marginal, not the joint law: :meth:`sample_interventional`
    draws every column from its own predicted marginal (column ``j`` is ``a``), so the
    columns are independent given the intervention. Marginal metrics (NLPID, calibration)
    are exact; joint-sample metrics would not be meaningful for this method.
    """

    def __init__(self, model, x_obs: np.ndarray):
        x_obs = np.asarray(x_obs, dtype=np.float32)
        if x_obs.ndim != 2:
            raise ValueError(f"x_obs must have shape (N, d), got {x_obs.shape}")
        self.model = model
        self.x_obs = x_obs
        self.n_nodes = x_obs.shape[1]

    def _mog(self, j: np.ndarray, a: np.ndarray, i: np.ndarray):
        j, i = np.asarray(j, dtype=np.int64).reshape(-1), np.asarray(i, dtype=np.int64).reshape(-1)
        for jq, iq in zip(j, i):
            check_query(int(jq), int(iq), self.n_nodes)
        x = torch.as_tensor(self.x_obs)[None].expand(len(j), *self.x_obs.shape)
        return self.model.predict(x, None, torch.as_tensor(j), torch.as_tensor(np.asarray(a, dtype=np.float32)),
                                  torch.as_tensor(i))

    def log_density_batch(self, j, a, i, x) -> DensityEstimate:
        mog = self._mog(j, a, i)
        with torch.no_grad():
            y = torch.as_tensor(np.asarray(x), dtype=mog.means.dtype, device=mog.means.device)
            lp = mog.log_prob(y).double().cpu().numpy()
        return DensityEstimate(lp, np.zeros_like(lp))

    def quantiles_batch(self, j, a, i, probs, rng=None, n_samples: int = 0) -> np.ndarray:
        mog = self._mog(j, a, i)  # one forward pass serves every level
        with torch.no_grad():
            return np.stack([mog.quantile(float(p)).reshape(-1).double().cpu().numpy() for p in probs], axis=1)

    def interventional_log_density(self, j: int, a: float, i: int, x: np.ndarray) -> DensityEstimate:
        est = self.log_density_batch(np.array([j]), np.array([a]), np.array([i]), np.asarray(x).reshape(1, -1))
        return DensityEstimate(est.log_density[0], est.mc_stderr[0])

    def sample_interventional(self, j: int, a: float, n: int, rng: np.random.Generator) -> np.ndarray:
        others = np.array([v for v in range(self.n_nodes) if v != j], dtype=np.int64)
        out = np.full((n, self.n_nodes), float(a))
        if len(others):
            mog = self._mog(np.full(len(others), j), np.full(len(others), a), others)
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            with torch.no_grad():
                out[:, others] = mog.sample(n, generator=gen).double().cpu().numpy().reshape(len(others), n).T
        return out


def predict(model, task: dict) -> MaceTNPAnswer:
    """MACE-TNP's answer for ONE task (arrays without the task axis): its real nodes' D_obs."""
    return MaceTNPAnswer(model, restrict(task)["x_obs"])
