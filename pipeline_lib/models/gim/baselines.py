"""The GIM paper's comparisons on one system: BaCaDI* and a black-box conditional generator.

* **BaCaDI*** (the paper's name): BaCaDI (:mod:`pipeline_lib.baselines.bacadi`) given every
  seen experiment as a regime with unknown targets, features unused. It infers targets of
  the seen experiments only; for an unseen experiment it has no map from features to
  targets, so its ``(K, d)`` answer fills the unseen rows with the mean target probability
  of each node over the seen experiments (the best feature-blind guess), and it predicts no
  samples for unseen perturbations.
* **Black box**: a conditional Gaussian ``x | gamma ~ N(mu(gamma), D(gamma) L L^T D(gamma))``
  with ``mu`` and ``log diag D`` from an MLP of the features and one shared unit-lower-
  triangular ``L`` (correlations), fitted by maximum likelihood (Adam, weight decay) on the
  rows of the seen experiments. No graph, no targets: it answers only samples of a
  perturbation, the setting in which GIM should be at least as accurate.

Both read the seen regimes ``0..K - n_test_regimes - 1`` only, like GIM.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from pipeline_lib.models.gim.config import GIMConfig, GIMInputError
from pipeline_lib.models.gim.fit import split_experiments
from pipeline_lib.models.gim.model import _mlp

__all__ = ["BlackBoxConfig", "BlackBoxGenerator", "bacadi_star_config", "fit_bacadi_star", "fit_blackbox"]


@lru_cache(maxsize=1)
def bacadi_star_config() -> type[BaseModel]:
    """``BaCaDIStarConfig``: BaCaDI's settings plus ``n_test_regimes`` (built on first use:
    ``pipeline_lib.baselines`` imports this package while it registers its entries)."""
    from pipeline_lib.baselines.bacadi import BaCaDIConfig

    class BaCaDIStarConfig(BaCaDIConfig):
        """BaCaDI's settings plus the number of held-out (unseen) regimes at the end."""

        n_test_regimes: int = Field(4, ge=0, description="the last regimes are unseen and not given to BaCaDI")

    return BaCaDIStarConfig


def fit_bacadi_star(data: Mapping[str, np.ndarray], cfg: BaseModel | None = None):
    """BaCaDI on ``x_obs`` and the seen regimes; ``(K, d)`` target probabilities (module docstring)."""
    from pipeline_lib.baselines.bacadi import fit_bacadi

    cfg = cfg or bacadi_star_config()()
    x_int = np.asarray(data["x_int"], dtype=np.float64)
    e = x_int.shape[0] - cfg.n_test_regimes
    if e < 1:
        raise GIMInputError(f"n_test_regimes={cfg.n_test_regimes} leaves no seen experiment of K={x_int.shape[0]}")
    post = fit_bacadi(data["x_obs"], x_int[:e], cfg)
    seen = post.target_probs
    unseen = np.repeat(seen.mean(0, keepdims=True), cfg.n_test_regimes, axis=0)
    post.target_probs = np.concatenate([seen, unseen])
    post.n_seen_regimes = e
    return post


class BlackBoxConfig(BaseModel):
    """The black-box conditional Gaussian of the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    n_test_regimes: int = Field(4, ge=0)
    hidden: int = Field(64, ge=1)
    layers: int = Field(2, ge=1)
    steps: int = Field(1500, ge=1)
    lr: float = Field(1e-2, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = Field(0, ge=0)


class BlackBoxGenerator:
    """A fitted conditional Gaussian: :meth:`sample_perturbation` for any features (data units)."""

    def __init__(self, net: torch.nn.Module, tril: torch.Tensor, d: int, x_mean, x_std, g_mean, g_std):
        self.net, self.tril, self.n_nodes = net.eval(), tril.detach(), d
        self.x_mean, self.x_std, self.g_mean, self.g_std = x_mean, x_std, g_mean, g_std

    @torch.no_grad()
    def _moments(self, gamma) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.as_tensor((np.asarray(gamma, np.float64).reshape(1, -1) - self.g_mean) / self.g_std,
                            dtype=torch.float32)
        out = self.net(g)[0]
        d = self.n_nodes
        scale = torch.diag(torch.exp(out[d:])) @ _unit_tril(self.tril)
        return out[:d], scale

    def predict_mean(self, gamma) -> np.ndarray:
        """``(d,)`` predicted mean of ``x | gamma`` (data units)."""
        mu, _ = self._moments(gamma)
        return mu.double().numpy() * self.x_std + self.x_mean

    def sample_perturbation(self, gamma, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, d)`` samples of ``x | gamma``."""
        mu, scale = self._moments(gamma)
        eps = torch.as_tensor(rng.standard_normal((n, self.n_nodes)), dtype=torch.float32)
        x = mu + eps @ scale.T
        return x.double().numpy() * self.x_std + self.x_mean


def _unit_tril(raw: torch.Tensor) -> torch.Tensor:
    d = raw.shape[0]
    return torch.tril(raw, diagonal=-1) + torch.eye(d, dtype=raw.dtype)


def fit_blackbox(data: Mapping[str, np.ndarray], cfg: BlackBoxConfig | None = None) -> BlackBoxGenerator:
    """Maximum likelihood of the conditional Gaussian on the seen experiments' rows."""
    cfg = cfg or BlackBoxConfig()
    parts = split_experiments(data, GIMConfig(n_test_regimes=cfg.n_test_regimes))
    x_int, gamma = parts["x_int"], parts["gamma"]
    e, n, d = x_int.shape
    x_mean, x_std = parts["x_obs"].mean(0), np.where(parts["x_obs"].std(0) > 1e-8, parts["x_obs"].std(0), 1.0)
    g_mean, g_std = gamma.mean(0), np.where(gamma.std(0) > 1e-8, gamma.std(0), 1.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = _mlp([gamma.shape[1], *[cfg.hidden] * cfg.layers, 2 * d])
    tril = torch.nn.Parameter(torch.zeros(d, d))
    x = torch.as_tensor((x_int - x_mean) / x_std, dtype=torch.float32)  # (E, n, d)
    g = torch.as_tensor((gamma - g_mean) / g_std, dtype=torch.float32)
    opt = torch.optim.Adam([*net.parameters(), tril], lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        out = net(g)  # (E, 2d)
        mu, log_s = out[:, :d], out[:, d:]
        # z = L^-1 D^-1 (x - mu): whitened residuals; log|Sigma|^(1/2) = sum log D (unit L)
        r = ((x - mu[:, None]) * torch.exp(-log_s)[:, None]).reshape(-1, d)
        z = torch.linalg.solve_triangular(_unit_tril(tril), r.T, upper=False).T
        nll = 0.5 * (z**2).sum() / (e * n) + log_s.sum() / e + 0.5 * d * math.log(2 * math.pi)
        nll.backward()
        opt.step()
    return BlackBoxGenerator(net, tril, d, x_mean, x_std, g_mean, g_std)
