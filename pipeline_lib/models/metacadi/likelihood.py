"""MetaCaDI's likelihood model (eqs. 2, 4-6) and its three task-adaptation rules.

For task t and node i, with the DAG column ``A_i`` masking the parents,

    X_i = (1 - m_ti) f_i(A_i * X; Theta_obs) + m_ti f^I_ti(A_i * X) + eps_i,   eps_i ~ N(0, 1),
    f^I_ti(z) = w_ti^T [h_i(z; Theta'_int), 1]                                            (eq. 4)

``f_i`` and the feature extractor ``h_i`` are per-node MLPs (``layers`` hidden layers), all
d of them evaluated as one batched module; ``w_ti: (d_h + 1,)`` (a constant feature is
appended so that a hard intervention's constant is representable) is the only
task-specific parameter. Adaptation on the support set of task t:

* ``closed_form`` (MetaCaDI-Analytical, eqs. 5-6): ridge regression of the support column on
  the support features ``H_ti: (n_s, d_h + 1)``,

      w_ti = (H_ti^T H_ti + lambda I)^-1 H_ti^T x_{:, i},

  all (t, i) at once with one batched Cholesky factorisation; differentiable, so the outer
  loss trains ``Theta'_int`` through the solution (Bertinetto et al. 2018).
* ``intv_maml``: ``inner_steps`` gradient steps on the support MSE of ``f^I`` alone, from the
  shared initialisation (all of ``Theta_int``: feature layers and a learned ``w_0``).
* ``full_maml``: the same on ``Theta_obs`` and ``Theta_int`` together, support loss
  ``mean (x - f)^2 + mean (x - f^I)^2``.

Layouts: node-major activations ``(T, d, n, features)``; shared weights ``(d, in, out)``,
per-task adapted weights ``(T, d, in, out)`` (one batched matmul either way). The MAML
inner loop differentiates the sum over tasks of the per-task mean losses with respect to
per-task copies of the weights, which gives every task its own gradient in one pass.
"""
from __future__ import annotations

import math

import torch
from torch import nn

Params = list[torch.Tensor]


def masked_inputs(x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """``x: (T, n, d)``, ``adj: (d, d)`` or one DAG per task ``(T, d, d)`` (row = parent) ->
    ``(T, d, n, d)``: entry ``[t, j, n, i]`` is ``A[i, j] x[t, n, i]``, node j's masked input."""
    mask = adj.transpose(-1, -2).unsqueeze(-2)  # (d_j, 1, d_i) or (T, d_j, 1, d_i)
    if mask.dim() == 3:
        mask = mask[None]
    return x[:, None, :, :] * mask


class NodeMLP(nn.Module):
    """d independent MLPs ``R^in -> R^out`` (leaky-ReLU hidden layers), evaluated together.

    ``forward(z: (T, d, n, in), params=None) -> (T, d, n, out)``; ``params`` (a list
    ``[W_1, b_1, ..., W_L, b_L]`` with ``W: (d, in, out)`` or ``(T, d, in, out)``, ``b``
    likewise with a singleton row axis) replaces the module's own weights (MAML).
    ``out_act`` applies the activation after the last layer too (a feature extractor).
    """

    def __init__(self, d: int, sizes: list[int], generator: torch.Generator, out_act: bool = False):
        super().__init__()
        self.out_act = out_act
        self.weights = nn.ParameterList()
        for a, b in zip(sizes[:-1], sizes[1:]):
            w = torch.randn(d, a, b, generator=generator) * math.sqrt(2.0 / a)
            self.weights.append(nn.Parameter(w))
            self.weights.append(nn.Parameter(torch.zeros(d, 1, b)))

    def params(self) -> Params:
        return list(self.weights)

    def forward(self, z: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        p = self.params() if params is None else params
        n_layers = len(p) // 2
        for k in range(n_layers):
            z = z @ p[2 * k] + p[2 * k + 1]
            if k < n_layers - 1 or self.out_act:
                z = torch.nn.functional.leaky_relu(z, 0.1)
        return z


def with_constant(h: torch.Tensor) -> torch.Tensor:
    """Append the constant feature: ``(..., n, d_h) -> (..., n, d_h + 1)``."""
    return torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)


def ridge_solve(h: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Closed-form ridge weights for every leading index at once.

    ``h: (..., n, F)``, ``y: (..., n)`` -> ``w: (..., F)`` with
    ``w = (H^T H + lam I)^-1 H^T y``, via one batched Cholesky factorisation of the
    ``(..., F, F)`` Gram matrices and ``cholesky_solve``.
    """
    gram = h.transpose(-1, -2) @ h  # (..., F, F)
    gram = gram + lam * torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
    rhs = h.transpose(-1, -2) @ y[..., None]  # (..., F, 1)
    chol = torch.linalg.cholesky(gram)
    return torch.cholesky_solve(rhs, chol)[..., 0]


def ridge_objective(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lam: float) -> torch.Tensor:
    """``sum over leading indices of ||y - H w||^2 + lam ||w||^2`` (eq. 5)."""
    resid = y - (h @ w[..., None])[..., 0]
    return (resid**2).sum() + lam * (w**2).sum()


def gradient_adapt(loss_fn, params: Params, steps: int, lr: float, create_graph: bool) -> Params:
    """``steps`` plain gradient steps ``theta <- theta - lr * d loss / d theta`` on ``params``
    (per-task copies: a leading task axis); ``create_graph`` keeps the graph for the outer
    loop's second derivatives (MAML), otherwise the steps are first order."""
    for _ in range(steps):
        grads = torch.autograd.grad(loss_fn(params), params, create_graph=create_graph)
        params = [p - lr * g for p, g in zip(params, grads)]
    return params


def per_task(params: Params, n_tasks: int) -> Params:
    """Per-task copies ``(T, ...)`` of shared weights (differentiable in the shared ones)."""
    return [p.unsqueeze(0).expand(n_tasks, *p.shape) + 0.0 for p in params]
