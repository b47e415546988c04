"""Shared neural building blocks for the amortized models.

Everything here is a plain ``torch.nn.Module`` with no knowledge of causal
semantics, so MACE-TNP, MetaCaDI, GIM and Cond-FiP can compose the same blocks.

Conventions
-----------
* Token tensors are ``(..., L, D)``: any number of leading batch axes, a set
  axis of length ``L`` (samples or nodes) and the model width ``D``.
* A *key padding mask* ``key_mask: (..., L_k)`` is boolean with ``True`` for
  real (attendable) keys. Every row must contain at least one ``True``; a row
  with no real key would give a 0/0 softmax.
* No positional encodings anywhere: attention over a set is then equivariant
  to permutations of the queries and invariant to permutations of the keys,
  which is exactly the symmetry the set-structured models need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_lib.models import fused_attention


class MLP(nn.Module):
    """Multi-layer perceptron ``x -> W_L g(... g(W_1 x + b_1) ...) + b_L``.

    Args:
        d_in: input width.
        d_hidden: width of every hidden layer.
        d_out: output width.
        n_layers: number of affine maps (``n_layers - 1`` hidden activations);
            ``n_layers = 2`` is the "2-layer MLP" of the MACE-TNP embeddings.
        activation: hidden non-linearity (GELU by default).
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int, n_layers: int = 2, activation: type[nn.Module] = nn.GELU):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        dims = [d_in] + [d_hidden] * (n_layers - 1) + [d_out]
        layers: list[nn.Module] = []
        for k in range(n_layers):
            layers.append(nn.Linear(dims[k], dims[k + 1]))
            if k < n_layers - 1:
                layers.append(activation())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with a key padding mask.

    For queries ``Q = X_q W_Q``, keys ``K = X_k W_K`` and values ``V = X_k W_V``
    split into ``h`` heads of width ``D / h``::

        head_r = softmax(Q_r K_r^T / sqrt(D/h) + M) V_r,
        out    = concat_r(head_r) W_O,

    where ``M`` is ``0`` for real keys and ``-inf`` for padded keys, so padded
    keys receive exactly zero weight. With autograd on: PyTorch's
    ``scaled_dot_product_attention``; at inference on the CPU (float32): the same maths by
    :func:`pipeline_lib.models.fused_attention.attention` where that kernel is available.

    Shapes: ``x_q: (B, L_q, D)``, ``x_k: (B, L_k, D)``, ``key_mask: (B, L_k)``
    -> ``(B, L_q, D)``.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, l_q, _ = x_q.shape
        l_k = x_k.shape[1]
        dh = self.d_model // self.n_heads
        q = self.q_proj(x_q).view(b, l_q, self.n_heads, dh)
        kv = self.kv_proj(x_k).view(b, l_k, 2, self.n_heads, dh)
        if l_q > 1 and self._fused(x_q):  # one query row: the permuted copies would cost more than they save
            out = fused_attention.attention(q, kv[:, :, 0], kv[:, :, 1], key_mask, dh ** -0.5)
            return self.out_proj(out.view(b, l_q, self.d_model))
        k, v = kv.permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, l_q, self.d_model))

    def _fused(self, x: torch.Tensor) -> bool:
        """Inference on the CPU in float32 goes through :mod:`~pipeline_lib.models.fused_attention`."""
        return (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
                and not (self.training and self.dropout > 0) and fused_attention.available())


class AttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block (self- or cross-attention + feed-forward).

    ::

        z   = x_q + MHA(LN_q(x_q), LN_k(x_k), key_mask)
        out = z + FF(LN_f(z)),        FF = Linear(D, m D) -> GELU -> Linear(m D, D)

    With ``x_k = None`` the block is self-attention (``x_k = x_q``, one shared
    LayerNorm). Leading axes beyond the batch are flattened by the caller.

    Shapes: ``x_q: (B, L_q, D)``, ``x_k: (B, L_k, D) | None``,
    ``key_mask: (B, L_k) | None`` -> ``(B, L_q, D)``.
    """

    def __init__(self, d_model: int, n_heads: int, ff_mult: int = 4, dropout: float = 0.0, cross: bool = False):
        super().__init__()
        self.cross = cross
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_k = nn.LayerNorm(d_model) if cross else None
        self.attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = MLP(d_model, ff_mult * d_model, d_model, n_layers=2)

    def forward(
        self, x_q: torch.Tensor, x_k: torch.Tensor | None = None, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = self.norm_q(x_q)
        if self.cross:
            if x_k is None:
                raise ValueError("cross-attention block needs x_k")
            k = self.norm_k(x_k)
        else:
            k = q
        z = x_q + self.attn(q, k, key_mask)
        return z + self.ff(self.norm_ff(z))
