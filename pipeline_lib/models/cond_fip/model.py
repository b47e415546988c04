"""Cond-FiP: amortized inference of causal mechanisms by conditional fixed-point iterations.

Mahajan, Gladrow, Hilmkil, Zhang, Scetbon (2024), "Amortized Inference of Causal Models via
Conditional Fixed-Point Iterations" (also "Zero-Shot Learning of Causal Models").

Task
----
An additive-noise SCM on ``d`` nodes with DAG ``G`` (``A[i, j] = 1`` iff ``i -> j``) is the
fixed-point problem::

    x = F(x, n),      F_j(x, n) = f_j(x_pa(j)) + n_j,

whose unique solution is reached by iterating ``x^{t+1} = F(x^t, n)`` at most ``d`` times
(node ``j`` is exact once its parents are: after ``depth(j) + 1`` steps). Given a dataset
``D = {x^m}`` (per-node standardised, as the prior stores it) and ``G``, Cond-FiP predicts
the mechanisms ``f = (f_1..f_d)`` of *that* SCM in one forward pass, so it can generate
observational, interventional and counterfactual samples without per-dataset training.

Architecture (B tasks, N samples, d nodes, D = d_model)
-------------------------------------------------------
1. **Dataset encoder** (AVICI-style): tokens ``h[b, m, v] = W x[b, m, v] + c``
   ``(B, N, d, D)``; ``L_enc`` layers alternating (a) self-attention over samples, per node,
   and (b) graph-masked attention over nodes, per sample (node ``j`` reads its parents;
   :mod:`.layers`). A head predicts the exogenous noise::

       n_hat[b, m, j] = x[b, m, j] - g(LN(h[b, m, j])),         g: 3-layer MLP,

   trained on ``|| n_hat - n ||^2`` (FiP's noise-prediction objective; ``n = noise_obs``).
   Rows whose ``obs_mask`` is False are processed but never attended to: padding, or
   query rows whose noise is predicted with the dataset as context.
2. **Dataset embedding**: ``Linear`` of the encoder tokens, ``L_emb`` more alternating
   layers, LayerNorm, max-pool over the (real) samples, LayerNorm, then three heads
   ``u_j, p_j, c_j = LN(W_u z_j), LN(W_p z_j), LN(W_c z_j)``, each ``(B, d, D)``: a value
   direction, a node query (the "position" of node ``j`` in *this* SCM) and a condition.
3. **Conditional fixed-point decoder**: keys ``e[b, m, i] = x[b, m, i] u_i + p_i``, queries
   start at ``q^0_j = p_j`` and pass ``L_dec`` adaptive-LayerNorm blocks
   (:class:`.layers.AdaLNGraphBlock`) in which node ``j`` attends to the keys of its
   parents only, conditioned on ``c``. The prediction is
   ``f_hat_j(x) = w^T LN(q^L_j) + b``. The keys are never updated and the queries read
   parents' keys only, so ``f_hat_j`` depends on ``x_pa(j)`` alone and the learned map
   ``F_hat(x, n) = f_hat(x) + n`` inherits the fixed-point property exactly.

Options that depart from the authors' architecture (all off by default, so a stored
configuration rebuilds the model it was trained as):

* ``edge_features`` (in ``cpu-small`` in session 10, not since): per-edge dataset features from the
  embedding tokens ``z: (B, N, d, D)`` before the pool,
  ``G[b, j, i] = MLP(LN(mean_m (A z[b, m, j]) * (B z[b, m, i])))``; each decoder block maps
  ``G[b, j, i]`` to a score bias and a signed gain ``1 + g`` of the attention weight of the edge
  ``i -> j`` per head. A per-node embedding must address a child's parents by their keys alone;
  measured (``benchmarks/cond_fip_diagnose.py``), it fits single-parent nodes like least
  squares but not the separate coefficients of two or more parents, and more steps, width,
  identity tags, signed weights or linear values did not change that; the pair features did.
* ``edge_parents`` (needs ``edge_features``; off everywhere, experiment of issue 15 s10b):
  the edge features get the joint second moments of a child's parents. ``C`` is the
  correlation matrix of the raw context rows (masked, standardised); each edge token
  ``t[j, i] = G[j, i] + a C[j, i]`` attends (one pre-LN attention + feed-forward block) to the
  tokens ``t[j, k]`` of the other parents ``k`` of ``j`` (masked by the graph; itself always),
  with keys and values shifted by the parent-pair term ``W G[i, k] + b C[i, k]``: partial
  regression coefficients need ``Sigma_PP^-1 Sigma_Pj``, which a per-pair feature cannot carry.
  Only the dataset embedding changes, so the fixed-point property is untouched.
* ``decoder_readout="ridge"`` (:meth:`CondFiP.fit_readout`): the decoder's output stream
  ``phi_j(x) = LN(q^L_j)`` becomes a feature map, and the readout ``f_hat_j = w_j^T phi_j + b_j``
  is fitted per dataset and node in closed form, by ridge regression of ``x_j`` on
  ``phi_j(x)`` over the context rows (penalty ``lambda n``, ``lambda`` learned; at prediction on
  every row of the dataset). Training backpropagates through the solve, so the network learns
  features in which a least-squares fit on noisy context rows generalises (a meta-learned
  feature map with a closed-form head, as in R2-D2 / MetaOptNet). The paper's readout is one
  learned vector shared by every dataset; with it, the coefficients of a child's parents have
  to come from the embedding, and they did not (multi-parent nodes, above). ``phi_j`` and the
  per-dataset weights depend on ``x_pa(j)`` only, so the fixed-point property holds exactly.
  ``ridge_parent_values``: the parents' own values ``x_pa(j)`` (others 0) are appended to
  ``phi_j``, so every linear mechanism is in the span. Measured and dropped (session 11): a
  learned scale of that block (its own penalty) and a per-dataset choice of the learned
  features' weight by leave-one-out error (README, Cond-FiP session 11).
  ``ridge_kernel`` (session 12): the closed-form head becomes kernel ridge regression with an
  **amortized kernel**, ``k_j(u, v) = phi_j(u)^T phi_j(v) + r_j lambda_j n rbf_j(u, v)``,
  ``rbf_j(u, v) = exp(-sum_i (u_i - v_i)^2 / (2 ell_ji^2))`` over the parents ``i`` of ``j``;
  the per-dataset hyperparameters (ARD lengthscales ``ell_ji``, signal-to-noise ``r_j``,
  penalty offset ``lambda_j / lambda``) are predicted by small heads on the pooled embedding
  tokens (pairs ``(z_j, z_i)`` for ``ell``), and the dual solve
  ``alpha_j = (K_j + lambda_j n I)^-1 y_j`` runs over the context rows. The per-dataset GP
  regression (``anm-gp``, type-II ML) is the right model class of the RFF priors and sits far
  below an MLP fit there; this head asks the network for the hyperparameters that the GP
  fits by optimisation, in one forward pass (amortized hyperparameter inference). Still a
  function of ``x_pa(j)`` per dataset, so the fixed-point property holds.
* ``abduction="decoder"`` (prediction only): the noise of a row is ``x - f_hat(x)``, the
  additive-noise inverse of the learned mechanisms, instead of the encoder's head; then
  regenerating a dataset row from its own noise gives the row back, so the calibrated
  density's reconstruction variance (:mod:`.answer`) uses the encoder's noise.
* ``decoder_values="linear"``: attention values from the raw tokens (linear in ``x``);
  ``decoder_readout="linear"``: no LayerNorm before the readout; ``decoder_weights="signed"``:
  the parents' raw scores as weights (:mod:`.layers`).
* ``embed_pool="mean"``, ``node_ids`` (fixed random tags per node label): diagnostics.

Training (one loss; :func:`cond_fip_loss`)
------------------------------------------
Each task's rows are split in two: context rows ``C`` (embedding + noise loss) and
target rows ``T`` (decoder loss) with the true pairs ``(x, f(x) = x - n)`` at the fixed
point ("final pair only", as the authors train)::

    L = w_n * mean_b RMSE_b(n_hat_C, n_C) + w_f * mean_b RMSE_b(f_hat(x_T), x_T - n_T)

``RMSE_b`` runs over the real rows and nodes of task ``b`` (the authors' per-dataset
RMSE). With ``detach_embedding`` the decoder loss does not reach the encoder, which mimics
the paper's two-stage training (encoder trained first, then frozen) in a single run.

Generation (:meth:`CondFiP.generate`), batched over tasks and samples: iterate
``x <- where(I, a, f_hat(x) + n)`` for hard interventions ``do(X_I = a)`` (``I`` may be
empty), ``1 + max depth`` times, or evaluate each ``f_hat_j`` once, level by level (the
same fixed point at a fraction of the cost). Counterfactuals abduct ``n_hat`` with the
encoder from the factual rows, then act (:mod:`.answer`).

Differences from the authors' code (microsoft/causica ``research_experiments/cond_fip``):
one joint run with a stop-gradient instead of two runs; the encoder's head outputs
``x - n_hat`` as theirs does, but its loss is on the noise; no EMA of weights; the null-key
attention normalises with ``1 + sum exp`` instead of ``max(1, sum exp)``; widths are set
by :data:`.presets.PRESETS`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from pipeline_lib.models.cond_fip.layers import AdaLNGraphBlock, GraphAttentionBlock
from pipeline_lib.models.layers import MLP, AttentionBlock


class CondFiPConfig(BaseModel):
    """Architecture and training-example settings of Cond-FiP (defaults: the authors' d = 20 sizes).

    ``n_embed``: context rows per training task (embedding + noise loss); with
    ``n_embed_min < n_embed`` one size ``~ U{n_embed_min..n_embed}`` is drawn per batch, so
    the embedding learns to work from few rows. ``n_target``: rows scored by the decoder
    loss (disjoint from the context rows; fewer when the task has too few rows).
    ``embed_rows``: at prediction every row is encoded (and gets its noise predicted), but
    only a fixed random subset of ``embed_rows`` rows is pooled into the dataset embedding,
    because a max over more rows than in training would shift its distribution.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_model: int = Field(256, ge=8)
    n_heads: int = Field(8, ge=1)
    ff_mult: int = Field(2, ge=1)
    enc_layers: int = Field(4, ge=1, description="alternating sample/node layers of the dataset encoder")
    emb_layers: int = Field(2, ge=0, description="extra alternating layers of the dataset embedding")
    dec_layers: int = Field(4, ge=1, description="adaptive-LN graph blocks of the decoder")
    head_hidden: int = Field(1024, ge=1, description="hidden width of the noise-prediction head")
    n_embed: int = Field(200, ge=2)
    n_embed_min: int | None = Field(None, ge=2, description="smallest context size (default n_embed)")
    n_target: int = Field(200, ge=1)
    embed_rows: int | None = Field(None, ge=2, description="rows pooled into the embedding at prediction "
                                   "(default n_embed: the max-pool sees as many rows as in training)")
    detach_embedding: bool = Field(True, description="decoder loss does not train the encoder")
    noise_weight: float = Field(1.0, ge=0.0)
    decoder_weight: float = Field(1.0, ge=0.0)
    loss: Literal["rmse", "mse"] = Field("rmse", description="per-task RMSE (paper) or pooled MSE")
    node_ids: bool = Field(False, description="diagnostic: add a fixed random vector per node label to the "
                           "encoder's input tokens (identity tags; breaks exact relabelling equivariance)")
    embed_pool: Literal["max", "mean"] = Field("max", description="pooling of the embedding tokens over the "
                                               "context rows (the authors' max, or the mean)")
    decoder_values: Literal["layernorm", "linear"] = Field(
        "layernorm", description="decoder attention values from the normalised keys (the authors') or linear "
        "in x from the raw tokens (:class:`.layers.AdaLNGraphBlock`)")
    decoder_weights: Literal["softmax", "signed"] = Field(
        "softmax", description="decoder attention weights: softmax with a null key (the authors') or the "
        "signed scores of the parents, unnormalised (a signed weight per edge)")
    edge_features: bool = Field(False, description="per-edge dataset features G_ij = mean_m (A z_mi) * (B z_mj) "
                                "of the embedding tokens give each decoder edge a score bias and a signed gain")
    edge_parents: bool = Field(False, description="with edge_features: each edge token attends to the edge "
                               "tokens of the child's other parents, with raw context correlations C_ji, C_ik")
    decoder_readout: Literal["layernorm", "linear", "ridge"] = Field(
        "layernorm", description="f_hat_j = w^T LN(q_j) + b (the authors'), w^T q_j + b (linear in the "
        "query stream), or w_j^T LN(q_j) + b_j with (w_j, b_j) the ridge fit of x_j on the features "
        "LN(q_j) of the dataset's rows, in closed form per dataset and node")
    ridge_lambda: float = Field(0.1, gt=0.0, description="ridge readout: initial penalty per row (learned)")
    ridge_parent_values: bool = Field(False, description="ridge readout: the parents' values x_pa(j) are "
                                      "features next to the decoder's, so every linear mechanism is in the span")
    ridge_kernel: bool = Field(False, description="ridge readout: add an ARD squared-exponential kernel on "
                               "the parents' values whose lengthscales, scale and penalty per node are "
                               "predicted from the embedding (kernel ridge in the dual over the context rows)")
    abduction: Literal["encoder", "decoder"] = Field(
        "encoder", description="noise abduction at prediction: the encoder's head (the authors') or "
        "n_hat = x - f_hat(x) through the decoder (the additive-noise inverse)")

    @model_validator(mode="after")
    def _check(self) -> "CondFiPConfig":
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_embed_min is not None and self.n_embed_min > self.n_embed:
            raise ValueError(f"n_embed_min={self.n_embed_min} exceeds n_embed={self.n_embed}")
        if self.edge_parents and not self.edge_features:
            raise ValueError("edge_parents needs edge_features")
        if self.ridge_parent_values and self.decoder_readout != "ridge":
            raise ValueError("ridge_parent_values needs decoder_readout='ridge'")
        if self.ridge_kernel and self.decoder_readout != "ridge":
            raise ValueError("ridge_kernel needs decoder_readout='ridge'")
        if self.noise_weight == 0 and self.decoder_weight == 0:
            raise ValueError("noise_weight and decoder_weight are both 0: nothing to train")
        return self


@dataclass(frozen=True)
class DatasetEmbedding:
    """Per-node dataset embedding: value direction ``u``, node query ``p``, condition ``c``,
    each ``(B, d, D)``; with ``edge_features`` also ``edge: (B, d, d, D)`` (``edge[b, j, i]``:
    the pair child ``j``, parent ``i``)."""

    value: torch.Tensor
    query: torch.Tensor
    cond: torch.Tensor
    edge: torch.Tensor | None = None
    readout_w: torch.Tensor | None = None
    readout_b: torch.Tensor | None = None
    # ridge_kernel: context rows (B, N, d) (padded rows 0), dual weights (B, d, N) (scaled by
    # r_j lambda_j n; padded rows 0), inverse lengthscales (B, d, d) (0 off the parents)
    kern_x: torch.Tensor | None = None
    kern_alpha: torch.Tensor | None = None
    kern_inv_ell: torch.Tensor | None = None
    # the pooled embedding tokens (B, d, D), where the kernel heads read them
    pooled: torch.Tensor | None = None

    def __getitem__(self, idx) -> "DatasetEmbedding":
        return DatasetEmbedding(*(None if t is None else t[idx] for t in (
            self.value, self.query, self.cond, self.edge, self.readout_w, self.readout_b, self.kern_x,
            self.kern_alpha, self.kern_inv_ell, self.pooled)))


def parent_mask(adjacency: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
    """``allowed: (B, d, d)`` bool with ``allowed[b, j, i] = A[b, i, j]`` (node j reads its
    parents), restricted to real nodes; the diagonal is always False."""
    a = adjacency.bool().transpose(-1, -2)
    eye = torch.eye(a.shape[-1], dtype=torch.bool, device=a.device)
    return a & node_mask[:, :, None] & node_mask[:, None, :] & ~eye


def graph_depth(allowed: torch.Tensor) -> torch.Tensor:
    """Longest-path depth of every node, ``(B, d)`` long (roots 0), from ``allowed: (B, d, d)``:
    ``depth_j = max_{i in pa(j)} depth_i + 1``, by ``d`` synchronous relaxations."""
    d = allowed.shape[-1]
    depth = torch.zeros(allowed.shape[:-1], dtype=torch.long, device=allowed.device)
    neg = torch.full_like(allowed, -1, dtype=torch.long)
    for _ in range(d):
        cand = torch.where(allowed, depth[:, None, :] + 1, neg).amax(-1)  # (B, d)
        depth = torch.maximum(depth, cand)
    return depth


class AlternatingLayer(nn.Module):
    """Attention over samples (per node, key mask ``obs_mask``) then over nodes (per sample,
    graph mask). ``h: (B, N, d, D)``, ``obs_mask: (B, N)``, ``allowed: (B, d, d)``."""

    def __init__(self, d_model: int, n_heads: int, ff_mult: int):
        super().__init__()
        self.samples = AttentionBlock(d_model, n_heads, ff_mult=ff_mult)
        self.nodes = GraphAttentionBlock(d_model, n_heads, ff_mult=ff_mult)

    def forward(self, h: torch.Tensor, obs_mask: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, d, dm = h.shape
        cols = h.transpose(1, 2).reshape(b * d, n, dm)
        keys = obs_mask[:, None, :].expand(b, d, n).reshape(b * d, n)
        h = self.samples(cols, key_mask=keys).view(b, d, n, dm).transpose(1, 2)
        return self.nodes(h, allowed[:, None])


def _context_corr(x: torch.Tensor, obs_mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Correlation matrix ``(B, d, d)`` of the rows of ``x: (B, N, d)`` with ``obs_mask``."""
    w = obs_mask[:, :, None].to(x.dtype)
    n = w.sum(1, keepdim=True).clamp_min(1.0)
    xc = (x - (x * w).sum(1, keepdim=True) / n) * w
    xs = xc / ((xc.square().sum(1, keepdim=True) / n).sqrt() + eps)
    return torch.einsum("bmj,bmi->bji", xs, xs) / n.squeeze(-1)[:, :, None]


class ParentSetLayer(nn.Module):
    """Per child ``j``, the edge tokens of ``j``'s parents attend to each other (``edge_parents``).

    ``edge: (B, d, d, D)`` (``[b, j, i]``), ``corr: (B, d, d)``, ``allowed: (B, d, d)`` ->
    ``(B, d, d, D)``. Token ``t[j, i] = edge[j, i] + a corr[j, i]``; query ``t[j, i]``, keys and
    values ``t[j, k] + W edge[i, k] + b corr[i, k]`` over ``k in pa(j)`` and ``k = i``."""

    def __init__(self, d_model: int, n_heads: int, ff_mult: int = 4):
        super().__init__()
        self.h = n_heads
        self.c_child = nn.Linear(1, d_model)
        self.c_pair = nn.Linear(1, d_model)
        self.pair = nn.Linear(d_model, d_model, bias=False)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.kv_pair = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)
        self.ff = MLP(d_model, ff_mult * d_model, d_model, n_layers=2)

    def forward(self, edge: torch.Tensor, corr: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, d, _, D = edge.shape
        H, dh = self.h, D // self.h
        t = edge + self.c_child(corr[..., None])  # (B, j, i, D)
        pair = self.pair(edge) + self.c_pair(corr[..., None])  # (B, i, k, D)
        q, k, v = self.qkv(self.norm1(t)).chunk(3, dim=-1)  # (B, j, i, D) / (B, j, k, D)
        kp, vp = self.kv_pair(pair).chunk(2, dim=-1)  # (B, i, k, D)
        k = k[:, :, None] + kp[:, None]  # (B, j, i, k, D)
        v = v[:, :, None] + vp[:, None]
        q = q.view(B, d, d, H, dh)
        k, v = k.view(B, d, d, d, H, dh), v.view(B, d, d, d, H, dh)
        s = torch.einsum("bjihe,bjikhe->bjihk", q, k) / dh ** 0.5
        eye = torch.eye(d, dtype=torch.bool, device=edge.device)
        mask = allowed[:, :, None, :] | eye[None, None]  # (B, j, i, k): k parent of j, or k = i
        s = s.masked_fill(~mask[:, :, :, None, :], float("-inf"))
        a = torch.softmax(s, dim=-1)
        o = torch.einsum("bjihk,bjikhe->bjihe", a, v).reshape(B, d, d, D)
        t = t + self.out(o)
        return t + self.ff(self.norm2(t))


def _masked_rmse_per_task(err: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``sqrt(sum mask err^2 / sum mask + eps)`` per task: ``err, mask: (B, N, d)`` -> ``(B,)``."""
    w = mask.to(err.dtype)
    return torch.sqrt((err.square() * w).sum((1, 2)) / w.sum((1, 2)).clamp_min(1.0) + eps)


class CondFiP(nn.Module):
    """Cond-FiP model; the maths is in the module docstring.

    A training *batch* (:func:`pipeline_lib.models.cond_fip.batching.cond_fip_batch`) holds
    ``x_ctx, noise_ctx: (B, Nc, d)``, ``ctx_mask: (B, Nc)``, ``x_tgt, f_tgt: (B, Nt, d)``,
    ``tgt_mask: (B, Nt)``, ``node_mask: (B, d)`` and ``adjacency: (B, d, d)``.
    """

    def __init__(self, config: CondFiPConfig | Mapping | None = None):
        super().__init__()
        cfg = config if isinstance(config, CondFiPConfig) else CondFiPConfig(**(config or {}))
        self.config = cfg
        dm, nh, ff = cfg.d_model, cfg.n_heads, cfg.ff_mult
        # --- dataset encoder + noise head
        self.enc_embed = nn.Linear(1, dm)
        if cfg.node_ids:
            g = torch.Generator().manual_seed(20240)
            self.register_buffer("node_id_table", torch.randn(256, dm, generator=g), persistent=False)
        self.enc_layers = nn.ModuleList([AlternatingLayer(dm, nh, ff) for _ in range(cfg.enc_layers)])
        self.enc_norm = nn.LayerNorm(dm)
        self.noise_head = MLP(dm, cfg.head_hidden, 1, n_layers=3)
        # --- dataset embedding
        self.emb_proj = nn.Linear(dm, dm)
        self.emb_layers = nn.ModuleList([AlternatingLayer(dm, nh, ff) for _ in range(cfg.emb_layers)])
        self.emb_norm_tokens = nn.LayerNorm(dm)
        self.emb_norm_pooled = nn.LayerNorm(dm)
        self.emb_heads = nn.ModuleList([nn.Linear(dm, dm, bias=False) for _ in range(3)])
        self.emb_head_norms = nn.ModuleList([nn.LayerNorm(dm) for _ in range(3)])
        # --- conditional fixed-point decoder
        if cfg.edge_features:
            self.edge_left = nn.Linear(dm, dm, bias=False)
            self.edge_right = nn.Linear(dm, dm, bias=False)
            self.edge_norm = nn.LayerNorm(dm)
            self.edge_mlp = MLP(dm, dm, dm, n_layers=2)
        if cfg.edge_parents:
            self.edge_set = ParentSetLayer(dm, nh, ff)
        self.dec_layers = nn.ModuleList([AdaLNGraphBlock(dm, nh, ff, values=cfg.decoder_values,
                                                         weights=cfg.decoder_weights,
                                                         edge_features=cfg.edge_features)
                                         for _ in range(cfg.dec_layers)])
        self.dec_norm = nn.LayerNorm(dm) if cfg.decoder_readout != "linear" else nn.Identity()
        if cfg.decoder_readout == "ridge":
            self.ridge_log_lambda = nn.Parameter(torch.tensor(float(cfg.ridge_lambda)).log())
            if cfg.ridge_kernel:
                # log lengthscale per (child, parent) pair; log signal-to-noise and log penalty offset per
                # node; zero-initialised outputs start every dataset at ell = 2 (standardised units), r = 10
                self.kern_edge = MLP(2 * dm, dm, 1, n_layers=2)
                self.kern_node = MLP(dm, dm, 2, n_layers=2)
                for head, bias in ((self.kern_edge, [float(np.log(2.0))]), (self.kern_node, [float(np.log(10.0)), 0.0])):
                    nn.init.zeros_(head.net[-1].weight)
                    with torch.no_grad():
                        head.net[-1].bias.copy_(torch.tensor(bias))
        else:
            self.dec_out = nn.Linear(dm, 1)

    # ----------------------------------------------------------------- encoder
    def encode(self, x: torch.Tensor, obs_mask: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Encoder tokens ``(B, N, d, D)`` of ``x: (B, N, d)``; rows with ``obs_mask`` False
        are queries only (never keys)."""
        h = self.enc_embed(x[..., None])
        if self.config.node_ids:
            h = h + self.node_id_table[: x.shape[-1]]
        for layer in self.enc_layers:
            h = layer(h, obs_mask, allowed)
        return self.enc_norm(h)

    def noise_from_tokens(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``n_hat = x - g(h)``: ``x: (B, N, d)``, ``h: (B, N, d, D)`` -> ``(B, N, d)``."""
        return x - self.noise_head(h).squeeze(-1)

    # --------------------------------------------------------------- embedding
    def embed(self, h: torch.Tensor, obs_mask: torch.Tensor, allowed: torch.Tensor,
              x: torch.Tensor | None = None) -> DatasetEmbedding:
        """Dataset embedding from encoder tokens ``h: (B, N, d, D)`` (masked max, or mean, over
        the real samples). ``x: (B, N, d)`` the same rows' values (needed by ``edge_parents``)."""
        z = self.emb_proj(h)
        for layer in self.emb_layers:
            z = layer(z, obs_mask, allowed)
        z = self.emb_norm_tokens(z)
        w = obs_mask[:, :, None, None].to(z.dtype)  # (B, N, 1, 1)
        n_rows = w.sum(1).clamp_min(1.0)  # (B, 1, 1)
        edge = None
        if self.config.edge_features:
            left, right = self.edge_left(z) * w, self.edge_right(z)  # (B, N, d, D)
            g = torch.einsum("bmjd,bmid->bjid", left, right) / n_rows[:, None]  # (B, d, d, D)
            edge = self.edge_mlp(self.edge_norm(g))
            if self.config.edge_parents:
                if x is None:
                    raise ValueError("edge_parents needs the context rows x in embed()")
                edge = self.edge_set(edge, _context_corr(x, obs_mask), allowed)
        if self.config.embed_pool == "max":
            z = z.masked_fill(~obs_mask[:, :, None, None], float("-inf")).amax(1)  # (B, d, D)
        else:
            z = (z * w).sum(1) / n_rows
        z = self.emb_norm_pooled(z)
        u, p, c = (norm(head(z)) for head, norm in zip(self.emb_heads, self.emb_head_norms))
        emb = DatasetEmbedding(u, p, c, edge, pooled=z)
        if self.config.decoder_readout == "ridge":
            if x is None:
                raise ValueError("decoder_readout='ridge' needs the context rows x in embed()")
            emb = self.fit_readout(emb, x, obs_mask, allowed)
        return emb

    def fit_readout(self, emb: DatasetEmbedding, x: torch.Tensor, obs_mask: torch.Tensor,
                    allowed: torch.Tensor) -> DatasetEmbedding:
        """Ridge readout (``decoder_readout="ridge"``): per task ``b`` and node ``j``, the
        closed-form fit of ``x[b, m, j]`` on the decoder features ``phi_j(x[b, m]) = LN(q^L_j)``
        (and the parents' values with ``ridge_parent_values``) over the rows with ``obs_mask``,
        centred, with penalty ``lambda * n_rows``::

            w_j = (Phi_c^T Phi_c + lambda n I)^-1 Phi_c^T y_c,   b_j = mean(y) - mean(Phi) w_j.

        ``x: (B, N, d)`` standardised rows. ``phi_j`` depends on ``x_pa(j)`` only and the fit is
        per dataset, so ``f_hat_j = w_j^T phi_j + b_j`` keeps the fixed-point property; a root's
        features are constant, so it gets ``w_j = 0`` and ``b_j`` its mean.
        """
        phi = self._features(x, emb, allowed)  # (B, N, d, D)
        w_row = obs_mask.to(phi.dtype)  # (B, N)
        n = w_row.sum(1).clamp_min(1.0)  # (B,)
        phi_mean = torch.einsum("bm,bmjd->bjd", w_row, phi) / n[:, None, None]
        y_mean = torch.einsum("bm,bmj->bj", w_row, x) / n[:, None]
        # the normal equations in float64: the features of a node with few parents are nearly
        # collinear, so the Gram matrix is ill-conditioned (cheap: B d systems of size D)
        phi_c = ((phi - phi_mean[:, None]) * w_row[:, :, None, None]).double()
        y_c = ((x - y_mean[:, None]) * w_row[:, :, None]).double()
        lam = self.ridge_log_lambda.double().exp() * n.double()[:, None, None, None]
        if self.config.ridge_kernel:
            return self._fit_kernel(emb, x, w_row, allowed, phi_c, y_c, lam, phi_mean, y_mean)
        w = self._ridge(phi_c, y_c, lam).to(phi.dtype)  # (B, d, F)
        b = y_mean - (phi_mean * w).sum(-1)
        return DatasetEmbedding(emb.value, emb.query, emb.cond, emb.edge, w, b)

    def _fit_kernel(self, emb: DatasetEmbedding, x: torch.Tensor, w_row: torch.Tensor, allowed: torch.Tensor,
                    phi_c: torch.Tensor, y_c: torch.Tensor, lam: torch.Tensor, phi_mean: torch.Tensor,
                    y_mean: torch.Tensor) -> DatasetEmbedding:
        """``ridge_kernel``: the dual solve per task and node (module docstring) over the context
        rows, in float64; returns the primal weights of the feature part and the scaled dual
        weights of the squared-exponential part."""
        z = emb.pooled  # (B, d, D)
        d = z.shape[1]
        pair = torch.cat([z[:, :, None].expand(-1, -1, d, -1), z[:, None].expand(-1, d, -1, -1)], -1)
        inv_ell = torch.exp(-self.kern_edge(pair).squeeze(-1)) * allowed.to(z.dtype)  # (B, d, d)
        node = self.kern_node(z)  # (B, d, 2)
        snr, lam_j = node[..., 0].double().exp(), lam[..., 0, 0] * node[..., 1].double().exp()  # (B, d)
        xk = x * w_row[..., None]  # (B, N, d) context rows, padded rows 0
        rbf = self._rbf(xk, xk, inv_ell).double()  # (B, N, j, N)
        keep = (w_row[:, :, None] * w_row[:, None, :]).double()  # (B, N, N)
        gram = (torch.einsum("bmjf,bnjf->bjmn", phi_c, phi_c)
                + (snr * lam_j)[..., None, None] * rbf.permute(0, 2, 1, 3) * keep[:, None])
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        # symmetric positive definite (a Gram matrix plus lambda_j n I): Cholesky, not LU
        chol, info = torch.linalg.cholesky_ex(gram + lam_j[..., None, None] * eye)
        if bool((info > 0).any()):
            raise FloatingPointError("ridge_kernel: the kernel system is not positive definite (non-finite "
                                     "features or hyperparameters)")
        alpha = torch.cholesky_solve(y_c.transpose(1, 2)[..., None], chol)[..., 0]
        w = torch.einsum("bmjf,bjm->bjf", phi_c, alpha).to(x.dtype)  # (B, d, F)
        b = y_mean - (phi_mean * w).sum(-1)
        scaled = (alpha * (snr * lam_j)[..., None] * w_row[:, None].double()).to(x.dtype)  # (B, d, N)
        return DatasetEmbedding(emb.value, emb.query, emb.cond, emb.edge, w, b, xk, scaled, inv_ell, z)

    @staticmethod
    def _rbf(u: torch.Tensor, v: torch.Tensor, inv_ell: torch.Tensor) -> torch.Tensor:
        """``exp(-sum_i (u_i - v_i)^2 inv_ell[j, i]^2 / 2)``: ``u (B, M, d)``, ``v (B, N, d)``,
        ``inv_ell (B, k, d)`` -> ``(B, M, k, N)``."""
        with torch.autocast(device_type=u.device.type, enabled=False):  # distances in float32 at least
            dt = torch.promote_types(u.dtype, torch.float32)
            ua = u.to(dt)[:, :, None, :] * inv_ell.to(dt)[:, None]  # (B, M, k, d)
            va = v.to(dt)[:, None, :, :] * inv_ell.to(dt)[:, :, None]  # (B, k, N, d)
            sq = ua.square().sum(-1)[..., None] + va.square().sum(-1)[:, None] - 2.0 * torch.einsum(
                "bmkd,bknd->bmkn", ua, va)
            return torch.exp(-0.5 * sq.clamp_min(0.0))

    @staticmethod
    def _ridge(phi_c: torch.Tensor, y_c: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """``(Phi^T Phi + lam I)^-1 Phi^T y`` per task and node: ``phi_c (B, N, d, F)``,
        ``y_c (B, N, d)`` (centred, padded rows 0) -> ``(B, d, F)``."""
        gram = torch.einsum("bmjd,bmje->bjde", phi_c, phi_c)  # (B, d, F, F)
        rhs = torch.einsum("bmjd,bmj->bjd", phi_c, y_c)
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        return torch.linalg.solve(gram + lam * eye, rhs[..., None]).squeeze(-1)

    # ----------------------------------------------------------------- decoder
    def mechanism(self, x: torch.Tensor, emb: DatasetEmbedding, allowed: torch.Tensor,
                  nodes: torch.Tensor | None = None) -> torch.Tensor:
        """``f_hat(x): (B, M, d)`` for ``x: (B, M, d)``; entry ``j`` depends on ``x_pa(j)`` only.

        With ``nodes: (B, k)`` (node indices per task) only those outputs are computed:
        ``(B, M, k)``, equal to the corresponding columns of the full call.
        """
        phi = self._features(x, emb, allowed, nodes)
        if self.config.decoder_readout != "ridge":
            return self.dec_out(phi).squeeze(-1)
        if emb.readout_w is None:
            raise ValueError("decoder_readout='ridge': the embedding has no fitted readout (embed() with x)")
        w, b = emb.readout_w, emb.readout_b
        alpha, inv_ell = emb.kern_alpha, emb.kern_inv_ell
        if nodes is not None:
            w, b = w.gather(1, nodes[:, :, None].expand(-1, -1, w.shape[-1])), b.gather(1, nodes)
            if alpha is not None:
                alpha = alpha.gather(1, nodes[:, :, None].expand(-1, -1, alpha.shape[-1]))
                inv_ell = inv_ell.gather(1, nodes[:, :, None].expand(-1, -1, inv_ell.shape[-1]))
        out = (phi * w[:, None]).sum(-1) + b[:, None]
        if alpha is not None:  # ridge_kernel: the squared-exponential part, sum_m alpha_jm rbf_j(x, x_m)
            out = out + torch.einsum("bmkn,bkn->bmk", self._rbf(x, emb.kern_x, inv_ell), alpha)
        return out

    def _features(self, x: torch.Tensor, emb: DatasetEmbedding, allowed: torch.Tensor,
                  nodes: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's output stream before the readout, ``(B, M, d or k, D)``; with
        ``ridge_parent_values`` the parents' values are appended (``D + d`` features)."""
        e = x[..., None] * emb.value[:, None] + emb.query[:, None]  # (B, M, d, D)
        query, cond_q, allow, edge = emb.query, emb.cond, allowed, emb.edge
        if nodes is not None:
            idx = nodes[:, :, None].expand(-1, -1, query.shape[-1])
            query, cond_q = query.gather(1, idx), cond_q.gather(1, idx)  # (B, k, D)
            allow = allowed.gather(1, nodes[:, :, None].expand(-1, -1, allowed.shape[-1]))  # (B, k, d)
            if edge is not None:
                edge = edge.gather(1, nodes[:, :, None, None].expand(-1, -1, *edge.shape[2:]))  # (B, k, d, D)
        q = query[:, None].expand(e.shape[:2] + query.shape[1:])
        cond_q, cond_k, allow = cond_q[:, None], emb.cond[:, None], allow[:, None]
        edge = None if edge is None else edge[:, None]
        for block in self.dec_layers:
            q = block(q, e, cond_q, cond_k, allow, edge=edge)
        phi = self.dec_norm(q)
        if self.config.ridge_parent_values:
            # the parents' own values (others 0) next to the learned features: (B, M, k, D + d)
            phi = torch.cat([phi, x[:, :, None, :] * allow.to(x.dtype)], dim=-1)
        return phi

    def generate(
        self,
        noise: torch.Tensor,
        emb: DatasetEmbedding,
        allowed: torch.Tensor,
        node_mask: torch.Tensor,
        int_mask: torch.Tensor | None = None,
        int_value: torch.Tensor | None = None,
        n_iter: int | None = None,
        schedule: Literal["fixed_point", "levels"] = "fixed_point",
    ) -> torch.Tensor:
        """Solve ``x = where(I, a, f_hat(x) + n)`` from ``x^0 = n``.

        ``schedule="fixed_point"``: the Jacobi iteration ``x^{t+1} = F_hat(x^t, n)`` of all
        nodes, ``n_iter`` times. ``schedule="levels"``: the same fixed point with each
        ``F_hat_j`` evaluated once, level by level (``depth_j = 0, 1, ...``): at step ``t``
        only the nodes of depth ``t`` are computed, from parents that have settled. Both give
        the fixed point (equal up to float rounding: the matrix shapes differ); ``levels``
        costs one decoder pass over the nodes instead of ``1 + max depth``.

        Args:
            noise: ``(B, M, d)`` exogenous noise (standardised units).
            int_mask, int_value: ``(B, d)`` hard intervention targets / values (None: none).
            n_iter: ``fixed_point`` iterations; default ``1 + max depth`` of the (mutilated)
                graphs, after which the iterate is the exact fixed point.

        Returns:
            ``x: (B, M, d)``; padded nodes are 0.
        """
        if int_mask is None:
            int_mask = torch.zeros_like(node_mask)
            int_value = torch.zeros(node_mask.shape, dtype=noise.dtype, device=noise.device)
        int_mask = int_mask.bool() & node_mask
        allowed = allowed & ~int_mask[:, :, None]  # an intervened node reads nobody
        keep = node_mask[:, None, :]
        x = torch.where(keep, noise, torch.zeros((), dtype=noise.dtype, device=noise.device))
        x = torch.where(int_mask[:, None, :], int_value[:, None, :].to(x.dtype), x)
        if schedule == "levels":
            return self._generate_levels(x, noise, emb, allowed, node_mask & ~int_mask)
        if n_iter is None:
            n_iter = int(graph_depth(allowed).max()) + 1
        for _ in range(n_iter):
            x = self.mechanism(x, emb, allowed) + noise
            x = torch.where(int_mask[:, None, :], int_value[:, None, :].to(x.dtype), x)
            x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return x

    def _generate_levels(self, x: torch.Tensor, noise: torch.Tensor, emb: DatasetEmbedding,
                         allowed: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        """Level-by-level evaluation of the fixed point (see :meth:`generate`); ``free: (B, d)``
        marks the nodes that follow their mechanism (real, not intervened)."""
        depth = torch.where(free, graph_depth(allowed), torch.full_like(free, -1, dtype=torch.long))
        for level in range(int(depth.max()) + 1):
            at = depth == level  # (B, d)
            k = int(at.sum(-1).max())
            # the k nodes of this level per task (padded with an arbitrary node, not written back)
            nodes = torch.argsort((~at).to(torch.int8), dim=-1, stable=True)[:, :k]  # (B, k)
            valid = at.gather(1, nodes)  # (B, k)
            f = self.mechanism(x, emb, allowed, nodes)  # (B, M, k)
            new = f + noise.gather(2, nodes[:, None, :].expand(-1, x.shape[1], -1))
            old = x.gather(2, nodes[:, None, :].expand(-1, x.shape[1], -1))
            x = x.scatter(2, nodes[:, None, :].expand(-1, x.shape[1], -1), torch.where(valid[:, None, :], new, old))
        return x

    # -------------------------------------------------------------------- loss
    _FIELDS = ("x_ctx", "noise_ctx", "ctx_mask", "x_tgt", "f_tgt", "tgt_mask", "node_mask", "adjacency")

    @classmethod
    def validate_batch(cls, batch: Mapping[str, torch.Tensor]) -> None:
        """Shape / content checks naming the offending field."""
        missing = [k for k in cls._FIELDS if k not in batch]
        if missing:
            raise ValueError(f"Cond-FiP batch is missing fields {missing}")
        b, nc, d = batch["x_ctx"].shape
        nt = batch["x_tgt"].shape[1]
        want = {"noise_ctx": (b, nc, d), "ctx_mask": (b, nc), "x_tgt": (b, nt, d), "f_tgt": (b, nt, d),
                "tgt_mask": (b, nt), "node_mask": (b, d), "adjacency": (b, d, d)}
        for key, shape in want.items():
            if tuple(batch[key].shape) != shape:
                raise ValueError(f"{key} must have shape {shape}, got {tuple(batch[key].shape)}")
        if not bool(batch["ctx_mask"].bool().any(-1).all()):
            raise ValueError("ctx_mask: every task needs at least one context row")

    def loss(self, batch: Mapping[str, torch.Tensor],
             stage: Literal["joint", "encoder", "decoder"] = "joint") -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of the module docstring and its two parts.

        ``stage`` selects what is trained (the paper's two-stage procedure, see
        :mod:`.training`): ``"joint"`` both terms (weighted by the config), ``"encoder"``
        the noise term only (the decoder is not run: ``mech_rmse`` is not reported),
        ``"decoder"`` the decoder term only, with the encoder run without gradients (frozen).
        """
        self.validate_batch(batch)
        if stage not in ("joint", "encoder", "decoder"):
            raise ValueError(f"stage must be 'joint', 'encoder' or 'decoder', got {stage!r}")
        cfg = self.config
        node_mask = batch["node_mask"].bool()
        ctx_mask = batch["ctx_mask"].bool()
        allowed = parent_mask(batch["adjacency"], node_mask)
        x_ctx = batch["x_ctx"].float()
        with torch.no_grad() if stage == "decoder" else nullcontext():
            h = self.encode(x_ctx, ctx_mask, allowed)
            n_hat = self.noise_from_tokens(x_ctx, h)
        m_ctx = ctx_mask[:, :, None] & node_mask[:, None, :]
        err_n = n_hat - batch["noise_ctx"].float()
        rmse_n = _masked_rmse_per_task(err_n, m_ctx)
        l_n = rmse_n.mean() if cfg.loss == "rmse" else (err_n.square() * m_ctx).sum() / m_ctx.sum().clamp_min(1)
        metrics = {"noise_rmse": float(rmse_n.detach().mean())}
        if stage == "encoder":
            return l_n, metrics
        m_tgt = batch["tgt_mask"].bool()[:, :, None] & node_mask[:, None, :]
        emb = self.embed(h.detach() if cfg.detach_embedding else h, ctx_mask, allowed, x_ctx)
        f_hat = self.mechanism(batch["x_tgt"].float(), emb, allowed)
        err_f = f_hat - batch["f_tgt"].float()
        rmse_f = _masked_rmse_per_task(err_f, m_tgt)
        l_f = rmse_f.mean() if cfg.loss == "rmse" else (err_f.square() * m_tgt).sum() / m_tgt.sum().clamp_min(1)
        metrics["mech_rmse"] = float(rmse_f.detach().mean())
        if stage == "decoder":
            return l_f, metrics
        return cfg.noise_weight * l_n + cfg.decoder_weight * l_f, metrics


def cond_fip_loss(model: CondFiP, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss for :func:`pipeline_lib.training.loop.train` (see :meth:`CondFiP.loss`)."""
    return model.loss(batch)
