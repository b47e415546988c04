"""Graph-masked attention and adaptive-LayerNorm blocks of Cond-FiP.

Conventions (as in :mod:`pipeline_lib.models.layers`): tokens are ``(..., L, D)``; any
number of leading axes broadcast. A *graph mask* ``allowed: (..., L_q, L_k)`` is boolean
with ``allowed[..., j, i] = True`` iff query node ``j`` may read key node ``i``; for a DAG
``A`` (``A[i, j] = 1`` iff ``i -> j``) the decoder uses ``allowed = A^T``: every node reads
its parents and nothing else.

Attention with a null key
-------------------------
Root nodes have no parents, so an ordinary softmax over the allowed keys would be 0/0.
Every query therefore also sees a *null key* with logit 0 and value 0::

    w_ji = exp(s_ji) 1[i in pa(j)] / (1 + sum_{k in pa(j)} exp(s_jk)),   s_ji = <q_j, k_i> / sqrt(D/h)
    out_j = W_O concat_r( sum_i w_rji v_ri )

so a root receives exactly 0 from attention and the weights of a node with parents sum to
less than 1 (a soft "how much to read" gate). Non-parents enter with weight exactly 0
(``exp(-inf)``), so the output of node ``j`` is a function of ``x_pa(j)`` *bitwise*: the
fixed-point iteration of the decoder settles node ``j`` exactly once its parents have
settled (tested).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline_lib.models.layers import MLP


class GraphAttention(nn.Module):
    """Multi-head attention restricted by a graph mask, with a zero null key (module docstring).

    Shapes: ``x_q: (..., L_q, D)``, ``x_k: (..., L_k, D)``, ``allowed: (..., L_q, L_k)``
    (broadcast against the leading axes) -> ``(..., L_q, D)``.
    """

    def __init__(self, d_model: int, n_heads: int, weights: str = "softmax"):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if weights not in ("softmax", "signed"):
            raise ValueError(f"weights must be 'softmax' or 'signed', got {weights!r}")
        self.weights = weights
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        # (..., L, D) -> (..., H, L, D/H)
        return t.unflatten(-1, (self.n_heads, self.d_head)).transpose(-2, -3)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor, allowed: torch.Tensor,
                x_v: torch.Tensor | None = None, edge_bias: torch.Tensor | None = None,
                edge_gain: torch.Tensor | None = None) -> torch.Tensor:
        """``x_v``: the tokens the values are read from (default ``x_k``), ``(..., L_k, D)``.
        ``edge_bias``, ``edge_gain``: ``(..., H, L_q, L_k)``, added to the scores / multiplying
        the weights of each (query, key) pair and head: ``out_j = sum_i g_rji w_rji v_ri``."""
        x_v = x_k if x_v is None else x_v
        q, k, v = self._heads(self.q_proj(x_q)), self._heads(self.k_proj(x_k)), self._heads(self.v_proj(x_v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (..., H, L_q, L_k)
        if edge_bias is not None:
            scores = scores + edge_bias
        if self.weights == "signed":
            # the scores themselves, parents only: a signed, unnormalised weight per edge
            weights = scores.masked_fill(~allowed.unsqueeze(-3), 0.0)
        else:
            scores = scores.masked_fill(~allowed.unsqueeze(-3), float("-inf"))
            null = torch.zeros(scores.shape[:-1] + (1,), dtype=scores.dtype, device=scores.device)
            weights = torch.softmax(torch.cat([scores, null], dim=-1), dim=-1)[..., :-1]
        if edge_gain is not None:
            weights = weights * edge_gain
        out = weights @ v  # (..., H, L_q, D/H)
        return self.out_proj(out.transpose(-2, -3).flatten(-2))


class GraphAttentionBlock(nn.Module):
    """Pre-LN self-attention over nodes under a graph mask, plus feed-forward::

        z = x + GA(LN(x), LN(x), allowed),   out = z + FF(LN(z))

    Shapes: ``x: (..., d, D)``, ``allowed: (..., d, d)`` -> ``(..., d, D)``.
    """

    def __init__(self, d_model: int, n_heads: int, ff_mult: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.attn = GraphAttention(d_model, n_heads)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = MLP(d_model, ff_mult * d_model, d_model, n_layers=2)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        z = x + self.attn(h, h, allowed)
        return z + self.ff(self.norm_ff(z))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive LayerNorm modulation ``x (1 + scale) + shift``."""
    return x * (1.0 + scale) + shift


class AdaLNGraphBlock(nn.Module):
    """Decoder block: graph cross-attention from node queries to node keys, modulated by a
    per-node condition ``c`` (adaptive LayerNorm, as in DiT)::

        (beta_1, gamma_1, alpha_1, beta_2, gamma_2, alpha_2) = W_c SiLU(c)      (W_c zero-initialised)
        z   = q + alpha_1 * GA(mod(LN(q); beta_1, gamma_1), mod(LN(e); beta_1, gamma_1), allowed)
        out = z + alpha_2 * FF(mod(LN(z); beta_2, gamma_2))

    The keys ``e`` are modulated with the condition of *their* node (``cond_k``), the queries
    with that of theirs (``cond_q``; the queries may be a subset of the nodes). With
    ``W_c = 0`` at initialisation every block starts as the identity.

    ``values``: ``"layernorm"`` reads the attention values from the same normalised,
    modulated keys; ``"linear"`` reads them from the raw tokens, ``v_i = W_V e_i + b_V``.
    For ``e_i = x_i u_i + p_i`` the LayerNorm saturates in ``x_i`` (``LN(x u + p) -> sign(x)
    LN(u)`` for large ``|x|``), so with ``"layernorm"`` no block output is linear in the
    parents' values; with ``"linear"`` it is, whenever the attention weights do not depend on
    ``x`` (nonlinearity stays available through the keys and the feed-forward).

    Shapes: ``q: (..., L_q, D)``, ``e: (..., d, D)``, ``cond_q: (..., L_q, D)``,
    ``cond_k: (..., d, D)``, ``allowed: (..., L_q, d)`` -> ``(..., L_q, D)``.
    """

    def __init__(self, d_model: int, n_heads: int, ff_mult: int = 4, values: str = "layernorm",
                 weights: str = "softmax", edge_features: bool = False):
        super().__init__()
        if values not in ("layernorm", "linear"):
            raise ValueError(f"values must be 'layernorm' or 'linear', got {values!r}")
        self.values = values
        self.norm_q = nn.LayerNorm(d_model, elementwise_affine=False)
        self.norm_k = nn.LayerNorm(d_model, elementwise_affine=False)
        self.norm_ff = nn.LayerNorm(d_model, elementwise_affine=False)
        self.attn = GraphAttention(d_model, n_heads, weights=weights)
        if edge_features:
            # random weights (not zero): a zero map would pass no gradient back to the edge
            # features at the start; the block still starts as the identity (its gate is 0)
            self.edge_proj = nn.Linear(d_model, 2 * n_heads)
            nn.init.zeros_(self.edge_proj.bias)
        self.ff = MLP(d_model, ff_mult * d_model, d_model, n_layers=2)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 6 * d_model))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, q: torch.Tensor, e: torch.Tensor, cond_q: torch.Tensor, cond_k: torch.Tensor,
                allowed: torch.Tensor, edge: torch.Tensor | None = None) -> torch.Tensor:
        """``edge: (..., L_q, d, D)`` per-edge features (``edge_features`` blocks only): per head,
        a score bias and a signed gain ``1 + g`` of each edge's attention weight."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond_q).chunk(6, dim=-1)
        shift_k, scale_k = self.modulation(cond_k)[..., : 2 * q.shape[-1]].chunk(2, dim=-1)
        qn = modulate(self.norm_q(q), shift1, scale1)
        kn = modulate(self.norm_k(e), shift_k, scale_k)
        bias = gain = None
        if edge is not None:
            bias, gain = self.edge_proj(edge).movedim(-1, -3).chunk(2, dim=-3)  # (..., H, L_q, d) each
            gain = 1.0 + gain
        z = q + gate1 * self.attn(qn, kn, allowed, x_v=e if self.values == "linear" else None,
                                  edge_bias=bias, edge_gain=gain)
        return z + gate2 * self.ff(modulate(self.norm_ff(z), shift2, scale2))
