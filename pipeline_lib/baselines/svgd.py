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


def svgd_steps(n_steps: int, progress: bool, desc: str):
    """The step indices 0..n_steps-1, as a tqdm bar (on stderr) when ``progress``."""
    if not progress:
        return range(n_steps)
    from tqdm.auto import trange

    return trange(n_steps, desc=desc, unit="step", leave=False)


def mc_chunk_size(n_mc: int, per_sample_elements: int, budget: int | None, device_type: str = "cpu") -> int:
    """MC samples per chunk so that one chunk's largest activation has about ``budget``
    elements; at least 1, at most ``n_mc``. ``None``: 2^21 (~8 MB in float32) on the CPU,
    where it ran fastest in the vectorisation benchmark (bigger chunks spill the caches and
    page-fault on fresh allocations), and 2^28 (1 GiB) on accelerators, where one big batch
    keeps the device busy (not measured: no GPU was available)."""
    if budget is None:
        budget = 2**21 if device_type == "cpu" else 2**28
    return max(1, min(n_mc, budget // max(1, per_sample_elements)))


def self_normalised_grad(
    log_weight, inputs: Sequence[torch.Tensor], n_mc: int, chunk: int
) -> list[torch.Tensor]:
    """``sum_m softmax_m(l_m) grad l_m`` per particle, streamed over chunks of MC samples.

    log_weight(start, stop) returns the log weights ``l: (P, stop - start)`` of MC samples
    ``start:stop``, differentiable in ``inputs`` (each with leading axis P, particle p's
    weights depending on its own rows only). This is the gradient of the self-normalised
    estimator ``log mean_m exp(l_m)`` used by DiBS-joint and BaCaDI. Chunk c contributes its
    local softmax-weighted gradient ``g_c`` and log-sum-exp ``s_c``; the total is
    ``sum_c exp(s_c - logsumexp_c s_c) g_c`` (a running log-sum-exp), so only one chunk's
    activations are alive at a time and the result equals the one-shot estimate up to
    float rounding, for any chunk size.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    total: list[torch.Tensor] | None = None
    lse = None
    for start in range(0, n_mc, chunk):
        lw = log_weight(start, min(n_mc, start + chunk))
        s_c = torch.logsumexp(lw.detach(), dim=1)  # (P,)
        w = torch.exp(lw.detach() - s_c[:, None])
        grads = torch.autograd.grad((w * lw).sum(), list(inputs))
        if total is None:
            total, lse = list(grads), s_c
            continue
        new = torch.logaddexp(lse, s_c)
        a, b = torch.exp(lse - new), torch.exp(s_c - new)
        total = [
            t * a.reshape(-1, *([1] * (t.ndim - 1))) + g * b.reshape(-1, *([1] * (g.ndim - 1)))
            for t, g in zip(total, grads)
        ]
        lse = new
    return total
