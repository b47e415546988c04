"""Stein variational gradient descent (Liu & Wang 2016) over batched particle tensors.

Particles are held as a list of *blocks*, each a tensor whose first axis indexes the P
particles (DiBS: the latent graph embedding ``Z: (P, d, k, 2)``; DiBS-joint adds the
mechanism parameters ``theta``; BaCaDI adds the intervention latents ``gamma: (P, K, d)``).
The kernel is the *additive* Frobenius RBF kernel of DiBS (Lorch et al. 2021, eq. 9)::

    k(x, x') = sum_b s_b exp(-||x_b - x'_b||_F^2 / h_b),

one bandwidth ``h_b`` and scale ``s_b`` per block. The SVGD direction for particle m is::

    phi(x_m) = (1/P) sum_l [ k(x_l, x_m) grad_{x_l} log p(x_l | D) + grad_{x_l} k(x_l, x_m) ].

Because the kernel is additive, ``grad_{x_l^b} k(x_l, x_m)`` involves only block b's term::

    grad_{x_l^b} k(x_l, x_m) = -(2 / h_b) s_b exp(-||x_l^b - x_m^b||^2 / h_b) (x_l^b - x_m^b),

so the repulsion of block b is ``(2 / h_b) [x_m^b sum_l K_b(l, m) - sum_l K_b(l, m) x_l^b]``
with ``K_b`` the block's kernel matrix: two matrix products, no loop over particles.

Ascent uses RMSprop with the constants of ``jax.example_libraries.optimizers.rmsprop``
(decay 0.9, eps 1e-8 inside the square root), which the reference DiBS code uses.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Frobenius distances of the particles of one block.

    x: (P, ...) -> (P, P) with entry (l, m) = ||x_l - x_m||_F^2 (clamped at 0 against
    round-off of the Gram-matrix identity).
    """
    flat = x.reshape(x.shape[0], -1)
    sq = (flat * flat).sum(-1)
    return (sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T).clamp_min(0.0)


def additive_rbf_kernel(
    blocks: Sequence[torch.Tensor], bandwidths: Sequence[float], scales: Sequence[float] | None = None
) -> list[torch.Tensor]:
    """Per-block kernel matrices ``K_b[l, m] = s_b exp(-||x_l^b - x_m^b||^2 / h_b)``, each (P, P)."""
    if len(blocks) != len(bandwidths):
        raise ValueError(f"bandwidths: need one per particle block ({len(blocks)}), got {len(bandwidths)}")
    scales = [1.0] * len(blocks) if scales is None else list(scales)
    for h in bandwidths:
        if not h > 0:
            raise ValueError(f"bandwidths: every kernel bandwidth must be > 0, got {h}")
    return [s * torch.exp(-squared_distances(x) / h) for x, h, s in zip(blocks, bandwidths, scales)]


def svgd_direction(
    blocks: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    bandwidths: Sequence[float],
    scales: Sequence[float] | None = None,
) -> list[torch.Tensor]:
    """SVGD transport direction phi for every block (same shapes as ``blocks``).

    blocks[b]: (P, ...) particle values; grads[b]: (P, ...) the score
    ``grad_{x^b} log p(x | D)`` at each particle. Returns the ascent direction (add
    ``step * phi`` to move particles toward the posterior).
    """
    if len(grads) != len(blocks):
        raise ValueError(f"grads: need one per particle block ({len(blocks)}), got {len(grads)}")
    n = blocks[0].shape[0]
    with torch.no_grad():
        kb = additive_rbf_kernel(blocks, bandwidths, scales)
        k = torch.stack(kb).sum(0)  # (P, P), symmetric
        out = []
        for x, g, kmat, h in zip(blocks, grads, kb, bandwidths):
            if x.shape != g.shape or x.shape[0] != n:
                raise ValueError(f"grads: shape {tuple(g.shape)} does not match particle block {tuple(x.shape)}")
            xf, gf = x.reshape(n, -1), g.reshape(n, -1)
            drive = k.T @ gf
            repulse = (2.0 / h) * (xf * kmat.sum(0)[:, None] - kmat.T @ xf)
            out.append(((drive + repulse) / n).reshape(x.shape))
    return out


class RMSprop:
    """RMSprop ascent on a list of tensors, matching ``jax.example_libraries.optimizers.rmsprop``.

    v <- gamma v + (1 - gamma) phi^2;   x <- x + step * phi / sqrt(v + eps).
    """

    def __init__(self, params: Sequence[torch.Tensor], step_size: float, gamma: float = 0.9, eps: float = 1e-8):
        if not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        self.step_size, self.gamma, self.eps = float(step_size), float(gamma), float(eps)
        self.avg_sq = [torch.zeros_like(p) for p in params]

    def ascend(self, params: Sequence[torch.Tensor], directions: Sequence[torch.Tensor]) -> None:
        """In-place update of ``params`` along ``directions``."""
        with torch.no_grad():
            for p, phi, v in zip(params, directions, self.avg_sq):
                v.mul_(self.gamma).addcmul_(phi, phi, value=1.0 - self.gamma)
                p.add_(self.step_size * phi / torch.sqrt(v + self.eps))
