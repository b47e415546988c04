"""DP-DAG: a differentiable sampler of DAGs (Charpentier, Kibler & Günnemann 2022).

A DAG on d nodes is a node ordering plus edges that only point forward in it:

    A = P^T U P,

with ``P`` a permutation matrix (``P[k, i] = 1`` iff node ``i`` sits at position ``k``) and
``U`` strictly upper triangular in *position* space, so that

    A[i, j] = U[pos(i), pos(j)],   edge i -> j only if pos(i) < pos(j):

every sample is acyclic by construction (no penalty, no projection). Both factors are
sampled with straight-through estimators: the forward value is the hard (0/1) matrix, the
backward pass uses the gradient of a continuous relaxation.

Ordering (SoftSort with Gumbel-top-k perturbation, Prillo & Eisenschlos 2020; Kool et al.
2020). Node scores ``s: (d,)`` are perturbed, ``s~ = s + g`` with ``g ~ Gumbel(0, 1)`` i.i.d.,
so that ``argsort(s~)`` (descending) is an exact sample of the Plackett-Luce distribution
over orderings. The relaxation is

    P_soft[k, i] = softmax_i( -|sort(s~)_k - s~_i| / tau_perm ),

whose row-wise argmax is the hard permutation ``P_hard``; the estimator is
``P = P_hard + P_soft - stopgrad(P_soft)``.

Edges (binary Gumbel-softmax / Gumbel-sigmoid, Jang et al. 2016; Maddison et al. 2016).
Position-space logits ``L: (d, d)`` (only the strict upper triangle is used),

    U_soft = sigmoid((L + log u - log(1 - u)) / tau_edge),  u ~ U(0, 1),
    U_hard = 1[U_soft > 1/2] (a Bernoulli(sigmoid(L)) sample),
    U = (U_hard + U_soft - stopgrad(U_soft)) * triu_1.

Graph posterior. The variational law q(A) is the push-forward of Plackett-Luce(s) x
Bernoulli(sigmoid(L)); its edge marginals are estimated by Monte Carlo over orderings with
the edge factor integrated exactly,

    P(i -> j) ~= (1/S) sum_s [P_s^T (sigmoid(L) * triu_1) P_s]_{ij}.

Node-space edges (``edge_space="node"``, our variant, used by MetaCaDI). The logits
``L: (d, d)`` belong to NODE pairs and the ordering only masks them,

    A = (P^T triu_1 P) * E,   E_ij ~ Bernoulli(sigmoid(L_ij)) (straight-through as above),
    P(i -> j) = P(pos(i) < pos(j)) * sigmoid(L_ij).

In position space a logit ``L_kl`` is trained by whichever node pair the sampled ordering puts
at positions (k, l); until the ordering has concentrated its gradient averages over node pairs
and the edge posterior stays uninformative (MetaCaDI's edge AUROC ~0.5, README). In node space
an edge's evidence always reaches its own logit.

Ordering gradient. Besides the SoftSort straight-through path, :meth:`DPDAG.order_log_prob`
gives the Plackett-Luce log probability of sampled orderings, for a score-function
(REINFORCE) estimator with a baseline (MetaCaDI's ``order_grad="st+score"``).

Sparsity prior: ``kl_to_bernoulli(p0) = sum_{k<l} KL(Bern(sigmoid(L_kl)) || Bern(p0))``, the
KL of the edge factor to an i.i.d. Bernoulli(p0) prior (the ordering's KL to the uniform
Plackett-Luce law is not included).
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

__all__ = ["DPDAG", "DPDAGOptions", "gumbel_sigmoid_st", "shift_count_scores", "softsort"]


class DPDAGOptions(BaseModel):
    """The DP-DAG options every method on this sampler shares (GIM, MetaCaDI): their configs
    derive from it, so a field means the same and defaults the same in both."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    edge_space: Literal["position", "node"] = Field(
        "node", description="edge logits per node pair masked by the sampled ordering (node), or per position "
                            "pair of the ordering (position, A = P^T U P: a logit averages the evidence of every "
                            "node pair the sampled orderings put there)")
    order_grad: Literal["st", "st+score"] = Field(
        "st+score", description="ordering gradient: SoftSort straight-through only, or plus the score-function "
                                "(REINFORCE) estimator over the n_graph_mc DAG samples (leave-one-out baseline)")
    order_init: Literal["uniform", "shift_count"] = Field(
        "shift_count", description="initial Plackett-Luce scores: by how many experiments shift a node's mean "
                                   "against the observational rows (|z| > order_init_z; shift_count_scores: a shift "
                                   "reaches the target and its descendants, so nodes shifted more often start later), "
                                   "or all 0 (uniform over orderings). Measured: README, GIM and MetaCaDI")
    order_init_z: float = Field(3.0, gt=0, description="z-score of a mean shift counted by order_init='shift_count'")
    order_init_scale: float = Field(2.0, ge=0, description="initial scores = -scale x the standardized shift counts "
                                                           "(the Gumbel noise of the orderings has scale 1)")



def softsort(scores: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft and hard permutation matrices of ``scores: (..., d)`` sorted in descending order.

    Returns ``(P_soft, P_hard)``, both ``(..., d, d)`` with row ``k`` = position ``k`` and
    column ``i`` = node ``i``; ``P_hard`` is the exact permutation of ``argsort(-scores)``.
    """
    sorted_scores = scores.sort(dim=-1, descending=True).values  # (..., d)
    logits = -(sorted_scores[..., :, None] - scores[..., None, :]).abs() / tau  # (..., d_pos, d_node)
    p_soft = logits.softmax(dim=-1)
    order = scores.argsort(dim=-1, descending=True)  # (..., d): node at each position
    p_hard = torch.nn.functional.one_hot(order, scores.shape[-1]).to(scores.dtype)
    return p_soft, p_hard


def gumbel_sigmoid_st(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
    """Straight-through binary Gumbel-softmax: forward 0/1 Bernoulli(sigmoid(logits)) draws,
    backward the gradient of ``sigmoid((logits + logistic noise) / tau)``."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    u = u.clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / tau)
    hard = (soft > 0.5).to(logits.dtype)
    return hard + soft - soft.detach()


class DPDAG(nn.Module):
    """Learnable DP-DAG distribution over DAGs on ``d`` nodes (module docstring).

    Parameters: ``order_scores: (d,)`` (Plackett-Luce scores of the nodes) and
    ``edge_logits: (d, d)`` (position-space Bernoulli logits, strict upper triangle used).
    """

    def __init__(self, d: int, tau_perm: float = 1.0, tau_edge: float = 1.0, edge_logit_init: float = 0.0,
                 edge_space: str = "position"):
        super().__init__()
        if d < 2:
            raise ValueError(f"d={d}: a DAG sampler needs at least 2 nodes")
        if tau_perm <= 0 or tau_edge <= 0:
            raise ValueError(f"tau_perm={tau_perm}, tau_edge={tau_edge}: temperatures must be > 0")
        if edge_space not in ("position", "node"):
            raise ValueError(f"edge_space={edge_space!r}: expected 'position' or 'node'")
        self.d = int(d)
        self.edge_space = edge_space
        self.tau_perm, self.tau_edge = float(tau_perm), float(tau_edge)
        self.order_scores = nn.Parameter(torch.zeros(d))
        self.edge_logits = nn.Parameter(torch.full((d, d), float(edge_logit_init)))
        self.register_buffer("triu", torch.triu(torch.ones(d, d), diagonal=1))
        self.register_buffer("eye", torch.eye(d), persistent=False)  # not in saved state dicts

    @torch.no_grad()
    def set_order_scores(self, scores: np.ndarray) -> None:
        """Start the ordering at ``scores: (d,)`` (e.g. :func:`shift_count_scores`)."""
        self.order_scores.copy_(torch.as_tensor(scores, dtype=self.order_scores.dtype))

    @property
    def n_edge_params(self) -> int:
        """Edge logits in use: d (d - 1) / 2 (position space) or d (d - 1) (node space)."""
        return self.d * (self.d - 1) // (2 if self.edge_space == "position" else 1)

    def _permutations(self, n: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, d, d) straight-through permutation samples and (n, d) their orderings (node at
        each position)."""
        p_soft, p_hard = softsort(self._perturbed_scores(n, generator), self.tau_perm)
        return p_hard + p_soft - p_soft.detach(), p_hard.argmax(-1)

    def sample(self, n: int, generator: torch.Generator | None = None, return_order: bool = False):
        """(n, d, d) hard DAG samples ``A = P^T U P`` carrying straight-through gradients to
        ``order_scores`` and ``edge_logits``; with ``return_order`` also the ``(n, d)`` sampled
        orderings (for :meth:`order_log_prob`)."""
        perm, order = self._permutations(n, generator)  # (n, d_pos, d_node)
        logits = self.edge_logits.expand(n, self.d, self.d)
        if self.edge_space == "node":  # order mask in node space times node-space edge draws
            allowed = perm.transpose(-1, -2) @ self.triu @ perm  # (n, d_node, d_node)
            adj = allowed * gumbel_sigmoid_st(logits, self.tau_edge, generator) * (1 - self.eye)
        else:
            u = gumbel_sigmoid_st(logits, self.tau_edge, generator) * self.triu  # (n, d_pos, d_pos)
            adj = perm.transpose(-1, -2) @ u @ perm
        return (adj, order) if return_order else adj

    def order_log_prob(self, order: torch.Tensor) -> torch.Tensor:
        """``log PL(order | order_scores)``: ``(n, d)`` orderings -> ``(n,)`` Plackett-Luce log
        probabilities, ``sum_k [s_{o_k} - logsumexp_{m >= k} s_{o_m}]`` (differentiable in the
        scores: the score-function estimator of the ordering's gradient)."""
        s = self.order_scores[order]  # (n, d) scores in sampled order
        tail = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)  # logsumexp over positions >= k
        return (s - tail).sum(-1)

    @torch.no_grad()
    def edge_probs(self, n_mc: int = 1000, generator: torch.Generator | None = None) -> np.ndarray:
        """(d, d) Monte Carlo edge marginals (orderings sampled, edges integrated exactly)."""
        _, p_hard = softsort(self._perturbed_scores(n_mc, generator), self.tau_perm)
        if self.edge_space == "node":  # P(pos(i) < pos(j)) * sigmoid(L_ij)
            before = (p_hard.transpose(-1, -2) @ self.triu @ p_hard).mean(0)
            return (before * torch.sigmoid(self.edge_logits) * (1 - self.eye)).cpu().double().numpy()
        probs = torch.sigmoid(self.edge_logits) * self.triu
        return (p_hard.transpose(-1, -2) @ probs @ p_hard).mean(0).cpu().double().numpy()

    @torch.no_grad()
    def sample_hard(self, n: int, generator: torch.Generator | None = None) -> np.ndarray:
        """(n, d, d) uint8 DAG samples (no gradients)."""
        return self.sample(n, generator).round().to(torch.uint8).cpu().numpy()

    def _perturbed_scores(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        s = self.order_scores
        u = torch.rand((n, self.d), generator=generator, dtype=s.dtype, device=s.device).clamp(1e-10, 1 - 1e-10)
        return s[None, :] - torch.log(-torch.log(u))

    def kl_to_bernoulli(self, p0: float) -> torch.Tensor:
        """sum over the edge logits in use (strict upper triangle in position space, off-diagonal
        in node space) of KL(Bern(sigmoid(L)) || Bern(p0))."""
        if not 0 < p0 < 1:
            raise ValueError(f"p0={p0}: the prior edge probability must lie in (0, 1)")
        logp = torch.nn.functional.logsigmoid(self.edge_logits)
        log1mp = torch.nn.functional.logsigmoid(-self.edge_logits)
        p = logp.exp()
        kl = p * (logp - math.log(p0)) + (1 - p) * (log1mp - math.log1p(-p0))
        used = self.triu if self.edge_space == "position" else 1 - self.eye
        return (kl * used).sum()


def shift_count_scores(x_obs: np.ndarray, x_int: np.ndarray, z_min: float, scale: float) -> np.ndarray:
    """``(d,)`` initial ordering scores from the seen experiments' mean shifts.

    A shift intervention on ``j`` moves the mean of ``j`` and of its descendants, so a node whose
    mean shifts in many experiments tends to sit late in the causal order. Per experiment and
    node ``z = (mean_e - mean_obs) / (std_obs sqrt(1/n_e + 1/n_obs))``; the count of ``|z| > z_min``
    over experiments, standardized, times ``-scale`` is the score (descending score = earlier).
    A heuristic start for the DP-DAG, which keeps learning the ordering."""
    n, n_obs = x_int.shape[1], len(x_obs)
    std = np.where(x_obs.std(0) > 1e-8, x_obs.std(0), 1.0)
    z = (x_int.mean(1) - x_obs.mean(0)) / (std * np.sqrt(1 / n + 1 / n_obs))
    count = (np.abs(z) > z_min).sum(0).astype(np.float64)
    spread = count.std()
    return -scale * (count - count.mean()) / (spread if spread > 0 else 1.0)
