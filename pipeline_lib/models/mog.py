"""Univariate mixture-of-Gaussians distribution (the MACE-TNP output head).

A batch of mixtures with batch shape ``S`` and ``K`` components is given by
logits ``l: (*S, K)``, means ``mu: (*S, K)`` and scales ``sigma: (*S, K) > 0``::

    w_k      = softmax(l)_k
    p(y)     = sum_k w_k N(y; mu_k, sigma_k^2)
    log p(y) = logsumexp_k [ log w_k - log sigma_k - 0.5 log(2 pi) - 0.5 ((y - mu_k)/sigma_k)^2 ]
    F(y)     = sum_k w_k Phi((y - mu_k) / sigma_k)
    E[Y]     = sum_k w_k mu_k
    Var[Y]   = sum_k w_k (sigma_k^2 + mu_k^2) - E[Y]^2

Quantiles ``F^{-1}(q)`` have no closed form; they are found by vectorised
bisection on ``F``, which is monotone, inside the bracket
``[min_k mu_k - 12 max_k sigma_k, max_k mu_k + 12 max_k sigma_k]`` (every
component's mass outside it is below 1e-32).
"""

from __future__ import annotations

import math

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class MixtureOfGaussians:
    """A batch of univariate Gaussian mixtures.

    Args:
        logits: ``(*S, K)`` unnormalised component log-weights.
        means: ``(*S, K)`` component means.
        scales: ``(*S, K)`` component standard deviations, strictly positive.

    Evaluation methods take points with one trailing axis of size ``M``
    (``y: (*S, M)``) and return ``(*S, M)``: ``M`` query points per mixture.
    """

    def __init__(self, logits: torch.Tensor, means: torch.Tensor, scales: torch.Tensor):
        if not (logits.shape == means.shape == scales.shape):
            raise ValueError(
                f"logits, means and scales must share a shape, got {tuple(logits.shape)}, "
                f"{tuple(means.shape)}, {tuple(scales.shape)}"
            )
        if logits.ndim < 1:
            raise ValueError("mixture parameters need a trailing component axis K")
        self.logits = logits
        self.means = means
        self.scales = scales

    @property
    def batch_shape(self) -> torch.Size:
        return self.logits.shape[:-1]

    @property
    def n_components(self) -> int:
        return self.logits.shape[-1]

    @property
    def log_weights(self) -> torch.Tensor:
        """``log w: (*S, K)``."""
        return torch.log_softmax(self.logits, dim=-1)

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=-1)

    @property
    def mean(self) -> torch.Tensor:
        """``E[Y]: (*S,)``."""
        return (self.weights * self.means).sum(-1)

    @property
    def var(self) -> torch.Tensor:
        """``Var[Y]: (*S,)`` by the law of total variance."""
        w = self.weights
        second = (w * (self.scales**2 + self.means**2)).sum(-1)
        return (second - self.mean**2).clamp_min(0.0)

    def _check_points(self, y: torch.Tensor) -> torch.Tensor:
        if y.ndim != len(self.batch_shape) + 1 or y.shape[:-1] != self.batch_shape:
            raise ValueError(
                f"points y must have shape (*batch_shape, M) = ({', '.join(map(str, self.batch_shape))}, M), "
                f"got {tuple(y.shape)}"
            )
        return y.to(self.means.dtype)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """``log p(y): (*S, M)`` for ``y: (*S, M)``."""
        y = self._check_points(y)
        z = (y[..., :, None] - self.means[..., None, :]) / self.scales[..., None, :]
        comp = self.log_weights[..., None, :] - torch.log(self.scales[..., None, :]) - _LOG_SQRT_2PI - 0.5 * z**2
        return torch.logsumexp(comp, dim=-1)

    def cdf(self, y: torch.Tensor) -> torch.Tensor:
        """``F(y): (*S, M)`` for ``y: (*S, M)``."""
        y = self._check_points(y)
        z = (y[..., :, None] - self.means[..., None, :]) / self.scales[..., None, :]
        return (self.weights[..., None, :] * torch.special.ndtr(z)).sum(-1)

    def quantile(self, q: torch.Tensor | float, n_iter: int = 64) -> torch.Tensor:
        """Quantile function ``F^{-1}(q)`` by vectorised bisection.

        Args:
            q: levels in (0, 1); a float, a 1-D tensor ``(Q,)`` shared by every
                mixture, or ``(*S, Q)``.
            n_iter: bisection steps; the bracket width shrinks by ``2^-n_iter``.

        Returns:
            ``(*S,)`` for a float ``q``, otherwise ``(*S, Q)``.
        """
        scalar = not torch.is_tensor(q)
        q_t = torch.as_tensor(q, dtype=self.means.dtype, device=self.means.device)
        if bool(((q_t <= 0) | (q_t >= 1)).any()):
            raise ValueError("quantile levels q must lie strictly inside (0, 1)")
        if q_t.ndim <= 1:
            q_t = q_t.reshape(*([1] * len(self.batch_shape)), -1).expand(*self.batch_shape, -1)
        q_t = self._check_points(q_t)
        spread = 12.0 * self.scales.amax(-1, keepdim=True)
        lo = (self.means.amin(-1, keepdim=True) - spread).expand_as(q_t).clone()
        hi = (self.means.amax(-1, keepdim=True) + spread).expand_as(q_t).clone()
        for _ in range(n_iter):
            mid = 0.5 * (lo + hi)
            below = self.cdf(mid) < q_t
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        out = 0.5 * (lo + hi)
        return out[..., 0] if scalar else out

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples per mixture: ``(*S, n)``.

        Ancestral sampling: ``k ~ Cat(w)``, then ``y = mu_k + sigma_k eps``.
        """
        flat_w = self.weights.reshape(-1, self.n_components)
        k = torch.multinomial(flat_w, n, replacement=True, generator=generator).reshape(*self.batch_shape, n)
        eps = torch.randn(k.shape, generator=generator, dtype=self.means.dtype, device=self.means.device)
        mu = torch.gather(self.means, -1, k)
        sigma = torch.gather(self.scales, -1, k)
        return mu + sigma * eps

    def affine(self, shift: torch.Tensor | float, scale: torch.Tensor | float) -> "MixtureOfGaussians":
        """Distribution of ``shift + scale * Y`` (``scale > 0``, broadcast over ``(*S,)``).

        Used to map a prediction made on standardised data back to data units:
        the density picks up the Jacobian ``-log scale`` automatically.
        """
        shift_t = torch.as_tensor(shift, dtype=self.means.dtype, device=self.means.device)
        scale_t = torch.as_tensor(scale, dtype=self.means.dtype, device=self.means.device)
        return MixtureOfGaussians(
            self.logits, shift_t[..., None] + scale_t[..., None] * self.means, scale_t[..., None] * self.scales
        )

    def detach(self) -> "MixtureOfGaussians":
        return MixtureOfGaussians(self.logits.detach(), self.means.detach(), self.scales.detach())

    def __repr__(self) -> str:
        return f"MixtureOfGaussians(batch_shape={tuple(self.batch_shape)}, K={self.n_components})"
