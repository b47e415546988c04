"""Batched nonlinear-Gaussian MLP mechanisms for DiBS-joint and BaCaDI.

The model (DiBS, Lorch et al. 2021, Sec. 5.2; Zheng et al. 2020) of node j given graph G::

    x_j = f_j(G[:, j] * x; theta_j) + eps_j,    eps_j ~ N(0, sigma^2),

with ``f_j`` a dense MLP (layers ``d -> h_1 -> ... -> h_L -> 1``, activation after each
hidden layer) whose *input* is the full vector ``x`` masked by the parent indicators of j
(column j of the adjacency, ``A[i, j] = 1`` iff ``i -> j``). A soft (Gumbel-relaxed) graph
multiplies the inputs by edge probabilities instead, which is what makes the likelihood
differentiable in the graph.

Parameters of all P particles and d nodes are one flat tensor ``theta: (P, n_params)``
(the SVGD kernel uses its Frobenius norm); :meth:`MLPGaussian.unflatten` returns views::

    W_0: (P, d, d, h_1)     [particle, node j, input i, unit]
    b_0: (P, d, h_1)
    W_l: (P, d, h_l, h_{l+1}),  b_l: (P, d, h_{l+1}),  last layer width 1.

Prior (as the reference code): every weight and bias ~ N(0, param_std^2), except that the
first-layer weights of non-parent inputs carry no prior term (their log density is
multiplied by ``G[i, j]``), since they never touch the likelihood:

    log p(theta | G) = sum_{p in theta \\ W_0} log N(p; 0, s^2)
                       + sum_{j, i, h} G[i, j] log N(W_0[j, i, h]; 0, s^2).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_ACTIVATIONS = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "leaky_relu": torch.nn.functional.leaky_relu,
}
# in-place versions for the hidden layers (their backward passes use the output only)
_ACTIVATIONS_ = {
    "relu": torch.relu_,
    "sigmoid": torch.sigmoid_,
    "tanh": torch.tanh_,
    "leaky_relu": torch.nn.functional.leaky_relu_,
}


def gaussian_log_pdf(x: torch.Tensor, mean: torch.Tensor | float, var: float) -> torch.Tensor:
    """Elementwise log N(x; mean, var)."""
    return -0.5 * (x - mean) ** 2 / var - 0.5 * math.log(2.0 * math.pi * var)


class MLPGaussian:
    """Per-node MLP mechanisms with additive Gaussian noise, batched over particles.

    d: number of nodes; hidden: hidden widths (reference DiBS: ``(5,)``); activation: one of
    relu / sigmoid / tanh / leaky_relu; obs_noise_var: sigma^2 (reference: 0.1, fixed);
    param_std: std of the Gaussian parameter prior (reference: 1.0).
    """

    def __init__(
        self,
        d: int,
        hidden: Sequence[int] = (5,),
        activation: str = "relu",
        obs_noise_var: float = 0.1,
        param_std: float = 1.0,
    ):
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden: need at least one hidden layer of width >= 1, got {tuple(hidden)}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if not obs_noise_var > 0 or not param_std > 0:
            raise ValueError(f"obs_noise_var and param_std must be > 0, got {obs_noise_var}, {param_std}")
        self.d, self.hidden, self.activation = int(d), tuple(int(h) for h in hidden), activation
        self.obs_noise_var, self.param_std = float(obs_noise_var), float(param_std)
        widths = (self.d, *self.hidden, 1)
        # per-particle shapes of W_0, b_0, W_1, b_1, ...
        self.shapes: list[tuple[int, ...]] = []
        for a, b in zip(widths[:-1], widths[1:]):
            self.shapes += [(self.d, a, b), (self.d, b)]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.n_params = sum(self.sizes)

    def unflatten(self, theta: torch.Tensor) -> list[torch.Tensor]:
        """theta: (P, n_params) -> [W_0, b_0, W_1, b_1, ...] with a leading P axis (views)."""
        if theta.ndim != 2 or theta.shape[1] != self.n_params:
            raise ValueError(f"theta must have shape (P, {self.n_params}), got {tuple(theta.shape)}")
        return [c.reshape(theta.shape[0], *s) for c, s in zip(torch.split(theta, self.sizes, dim=1), self.shapes)]

    def init_params(self, n_particles: int, generator: torch.Generator, dtype=torch.float32, device="cpu") -> torch.Tensor:
        """Draw ``(P, n_params)`` from the parameter prior N(0, param_std^2)."""
        return self.param_std * torch.randn(
            n_particles, self.n_params, generator=generator, dtype=dtype, device=device
        )

    def means(self, theta: torch.Tensor, x: torch.Tensor, graphs: torch.Tensor) -> torch.Tensor:
        """Conditional means f_j(G[:, j] * x) of every node.

        theta: (P, n_params); graphs: (P, *B, d, d) hard or soft; x: (N, d) shared by all
        particles, or (P, *B, N, d). Returns (P, *B, N, d).
        """
        d = self.d
        if graphs.shape[-2:] != (d, d) or graphs.shape[0] != theta.shape[0]:
            raise ValueError(f"graphs must have shape (P={theta.shape[0]}, ..., {d}, {d}), got {tuple(graphs.shape)}")
        if x.shape[-1] != d:
            raise ValueError(f"x must have {d} columns (nodes), got shape {tuple(x.shape)}")
        extra = graphs.ndim - 3
        params = [p.reshape(p.shape[0], *([1] * extra), *p.shape[1:]) for p in self.unflatten(theta)]
        lead = graphs.shape[:-2]
        h1 = self.hidden[0]
        # Activations are kept *feature-major*, (.., (j, h), n) with the rows last: every
        # layer is then one batched matmul whose long axis (the N rows) is the BLAS output's
        # column axis, and the backward pass gets contiguous gradients. (Row-major layouts
        # with d- or h-wide outputs ran ~3-4x slower per step at 20 particles x 128 graphs;
        # benchmarks/baselines.py, vectorisation.)
        # First layer with parent masking: a[.., (j, h), n] = sum_i G[.., i, j] W_0[.., j, i, h] x[.., n, i].
        wt = graphs.transpose(-1, -2)[..., :, None, :] * params[0].transpose(-1, -2)  # (.., j, h, i)
        h = torch.matmul(wt.reshape(*lead, d * h1, d), x.transpose(-1, -2))  # (.., j*h, N)
        # in place: the matmul's backward does not need its output, and the hidden tensors
        # are the big ones (one allocation less per layer)
        h = h.add_(params[1].reshape(*params[1].shape[:-2], d * h1, 1))
        n_layers = len(params) // 2
        act_ = _ACTIVATIONS_[self.activation]
        for layer in range(1, n_layers):
            h = act_(h)
            w, b = params[2 * layer], params[2 * layer + 1]  # (.., j, h_l, h_l+1), (.., j, h_l+1)
            hl, hn = w.shape[-2], w.shape[-1]
            if layer == n_layers - 1:
                # width-1 output layer as one matmul with the block-diagonal weight
                # B[.., j', (j, h)] = w[.., j, h] delta(j, j') (d times this small layer's flops)
                eye = torch.eye(d, dtype=w.dtype, device=w.device)
                blk = (eye[:, :, None] * w[..., 0][..., None, :, :]).reshape(*w.shape[:-3], d, d * hl)
                out = torch.matmul(blk, h) + b[..., :, None, 0]  # (.., d, N)
                return out.transpose(-1, -2)
            h = torch.einsum("...jhn,...jhk->...jkn", h.unflatten(-2, (d, hl)), w).flatten(-3, -2)
            h = h.add_(b.reshape(*b.shape[:-2], d * hn, 1))
        raise AssertionError("unreachable: the network has an output layer")

    def log_lik_terms(self, theta: torch.Tensor, x: torch.Tensor, graphs: torch.Tensor) -> torch.Tensor:
        """log N(x_nj; f_j(G[:, j] * x_n), sigma^2) for every sample and node, (P, *B, N, d)."""
        return gaussian_log_pdf(x, self.means(theta, x, graphs), self.obs_noise_var)

    def log_prior(self, theta: torch.Tensor, graphs: torch.Tensor) -> torch.Tensor:
        """log p(theta | G) (module docstring), graphs (P, *B, d, d) -> (P, *B)."""
        params = self.unflatten(theta)
        s2 = self.param_std**2
        rest = sum(gaussian_log_pdf(p, 0.0, s2).flatten(1).sum(1) for p in params[1:])  # (P,)
        w0 = gaussian_log_pdf(params[0], 0.0, s2).sum(-1)  # (P, j, i)
        extra = graphs.ndim - 3
        w0 = w0.reshape(w0.shape[0], *([1] * extra), self.d, self.d)
        first = (graphs.transpose(-1, -2) * w0).sum((-1, -2))  # (P, *B)
        return first + rest.reshape(-1, *([1] * extra))
