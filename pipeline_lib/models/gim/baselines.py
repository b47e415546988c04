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
  perturbation, the setting in which GIM should be at least as accurate. With ``dose_feature``
  it gets GIM's dose-response form (:mod:`.model`): the MLP reads the drug features only and
  ``mu = mu_0 + rho a(g)``, ``log diag D = s_0 + rho b(g)`` with the same hierarchical Hill curve
  ``rho`` in the log dose (the comparison in which GIM's causal model, not the dose form, differs).

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
from pipeline_lib.models.gim.model import _mlp, check_dose_feature, hill_parameters, hill_response, split_dose

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
    dose_feature: int | None = Field(None, ge=0, description="the log-dose feature (GIMConfig.dose_feature; "
                                                             "None: one MLP of all features)")
    dose_prior_std: float = Field(0.3, gt=0, description="N(0, s^2) prior of a drug's Hill-curve deviations")
    seed: int = Field(0, ge=0)


class ConditionalMoments(torch.nn.Module):
    """Features ``g: (E, p)`` -> mean and log-std ``(E, d)`` of the black box (module docstring)."""

    def __init__(self, p: int, d: int, cfg: BlackBoxConfig):
        super().__init__()
        self.d, self.dose = d, cfg.dose_feature
        check_dose_feature(self.dose, p)
        n_in, n_out = (p, 2 * d) if self.dose is None else (max(p - 1, 1), 2 * d + 2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = _mlp([n_in, *[cfg.hidden] * cfg.layers, n_out])
        if self.dose is not None:
            self.base = torch.nn.Parameter(torch.zeros(2 * d))  # mu_0, s_0
            self.hill_raw, self.log_ec50 = hill_parameters()

    def forward(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """mean, log-std ``(E, d)`` and the Hill deviations ``(E, 2)`` (None without a dose feature)."""
        d = self.d
        if self.dose is None:
            out = self.net(g)
            return out[:, :d], out[:, d:], None
        drug, log_dose = split_dose(g, self.dose)
        out = self.net(drug)
        dev = out[:, -2:]
        response = hill_response(log_dose, self.hill_raw, self.log_ec50, dev)
        moments = self.base + response * out[:, : 2 * d]
        return moments[:, :d], moments[:, d:], dev


class BlackBoxGenerator:
    """A fitted conditional Gaussian: :meth:`sample_perturbation` for any features (data units)."""

    def __init__(self, net: ConditionalMoments, tril: torch.Tensor, d: int, x_mean, x_std, g_mean, g_std):
        self.net, self.tril, self.n_nodes = net.eval(), tril.detach(), d
        self.x_mean, self.x_std, self.g_mean, self.g_std = x_mean, x_std, g_mean, g_std

    @torch.no_grad()
    def _moments(self, gamma) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.as_tensor((np.asarray(gamma, np.float64).reshape(1, -1) - self.g_mean) / self.g_std,
                            dtype=torch.float32)
        mu, log_s, _ = self.net(g)
        scale = torch.diag(torch.exp(log_s[0])) @ _unit_tril(self.tril)
        return mu[0], scale

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
    net = ConditionalMoments(gamma.shape[1], d, cfg)
    tril = torch.nn.Parameter(torch.zeros(d, d))
    x = torch.as_tensor((x_int - x_mean) / x_std, dtype=torch.float32)  # (E, n, d)
    g = torch.as_tensor((gamma - g_mean) / g_std, dtype=torch.float32)
    opt = torch.optim.Adam([*net.parameters(), tril], lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        mu, log_s, dev = net(g)  # (E, d) each
        # z = L^-1 D^-1 (x - mu): whitened residuals; log|Sigma|^(1/2) = sum log D (unit L)
        r = ((x - mu[:, None]) * torch.exp(-log_s)[:, None]).reshape(-1, d)
        z = torch.linalg.solve_triangular(_unit_tril(tril), r.T, upper=False).T
        nll = 0.5 * (z**2).sum() / (e * n) + log_s.sum() / e + 0.5 * d * math.log(2 * math.pi)
        if dev is not None:  # the Hill deviations' prior, per row like the likelihood
            nll = nll + (dev**2).sum() / (2 * cfg.dose_prior_std**2) / (e * n)
        nll.backward()
        opt.step()
    return BlackBoxGenerator(net, tril, d, x_mean, x_std, g_mean, g_std)
