"""MetaCaDI's intervention target predictor (Sec. 4.2, eq. 3).

Per task t, with the support rows ``D^s_t: (n_s, d)`` and the predictions of the two
mechanisms on them, ``Xhat_obs = f(A * D^s)`` and ``Xhat_int = f^I_t(A * D^s)``, the row
features are the nine ``(n_s, d)`` blocks

    C_t = [D, Xhat_obs, D - Xhat_obs, (D - Xhat_obs)^2,
           Xhat_int, D - Xhat_int, (D - Xhat_int)^2, mu(D), sigma(D)],

(``mu``, ``sigma``: column mean and std of D broadcast over rows). Deep Sets pooling with an
MLP ``h`` gives the order-invariant task feature

    F_t = [ (1/n_s) sum_n h(c_tn),  h((1/n_s) sum_n c_tn) ]      (mean of embeddings,
                                                                  embedding of the mean)

and an MLP ``g`` the target logits ``zeta_t = g(F_t)``; ``m_t`` is then drawn from the
binary Gumbel-softmax with logits ``zeta_t``. Two layouts:

* ``joint`` (the paper): ``c_tn in R^{9d}`` (all nodes of a row), ``h: R^{9d} -> R^k``,
  ``g: R^{2k} -> R^d``;
* ``per_node``: ``c_tni in R^9`` per node, ``h: R^9 -> R^k`` and ``g: R^{2k} -> R`` shared by
  the nodes (T d training examples instead of T; the variant is not in the paper).
"""
from __future__ import annotations

import torch
from torch import nn

N_FEATURES = 9


def row_features(x: torch.Tensor, x_obs_hat: torch.Tensor, x_int_hat: torch.Tensor) -> torch.Tensor:
    """``x, x_obs_hat, x_int_hat: (T, n, d)`` -> ``C: (T, n, d, 9)`` (the blocks of C_t, node-wise)."""
    r_obs, r_int = x - x_obs_hat, x - x_int_hat
    mu = x.mean(dim=1, keepdim=True).expand_as(x)
    sd = x.std(dim=1, unbiased=False, keepdim=True).expand_as(x)
    return torch.stack([x, x_obs_hat, r_obs, r_obs**2, x_int_hat, r_int, r_int**2, mu, sd], dim=-1)


def _mlp(sizes: list[int]) -> nn.Sequential:
    mods: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(nn.Linear(a, b))
        if k < len(sizes) - 2:
            mods.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*mods)


class TargetPredictor(nn.Module):
    """``zeta = g(F(C))``: ``C: (T, n, d, 9) -> logits (T, d)`` (module docstring)."""

    def __init__(self, d: int, layout: str, embed_dim: int, hidden: int):
        super().__init__()
        if layout not in ("joint", "per_node"):
            raise ValueError(f"predictor={layout!r}: expected 'joint' or 'per_node'")
        self.layout = layout
        n_in = N_FEATURES * d if layout == "joint" else N_FEATURES
        n_out = d if layout == "joint" else 1
        self.h = _mlp([n_in, hidden, embed_dim])
        self.g = _mlp([2 * embed_dim, hidden, n_out])

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        t, n, d, f = c.shape
        if self.layout == "joint":
            c = c.reshape(t, n, d * f)  # (T, n, 9d)
        z_me = self.h(c).mean(dim=1)  # joint: (T, k); per_node: (T, d, k)
        z_em = self.h(c.mean(dim=1))
        logits = self.g(torch.cat([z_me, z_em], dim=-1))
        return logits if self.layout == "joint" else logits[..., 0]


def sample_targets(logits: torch.Tensor, tau: float, generator: torch.Generator | None) -> torch.Tensor:
    """Relaxed binary Gumbel-softmax sample ``sigmoid((zeta + logistic noise) / tau)`` in (0, 1)."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    u = u.clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / tau)
