"""The MetaCaDI model: DP-DAG + likelihood + target predictor, and the objective of eq. 7.

Task-shared parameters ``Phi = {phi, psi (DP-DAG), eta, varsigma (predictor),
Theta_obs, Theta'_int (and w_0 for the MAML variants)}``; task-specific ``w_ti`` come from
the adaptation rule (:mod:`.likelihood`). One outer step on the T meta-training tasks,
with one DAG sample ``A ~ q_phi,psi`` (straight-through) per step:

    w_t      = adapt(D^s_t; A)                                     (ridge or MAML)
    zeta_t   = g_eta(F_t(D^s_t, f(A * D^s_t), f^I_t(A * D^s_t)))      (:mod:`.targets`)
    m~_t     = sigmoid((zeta_t + L) / tau),  L ~ Logistic(0, 1)
    xhat^q_t = (1 - m~_t) * f(A * D^q_t) + m~_t * f^I_t(A * D^q_t)

    L(Phi) = (1/T) sum_t [ L_R,t + lambda_I L_I,t + lambda_H L_H,t ] + w_G (L_G + L_O),

    L_R,t = mean_{n, i} (x^q_tni - xhat^q_tni)^2                   (query reconstruction)
            [noise="learned": mean_{n, i} (x^q_tni - xhat^q_tni)^2 / (2 sigma_i^2) + log sigma_i]
    L_I,t = mean_i sigmoid(zeta_ti)                                (target sparsity, L1 of m_t)
    L_H,t = mean_{i != j} HSIC(r_ti, r_tj),  r_t = x^q_t - xhat^q_t   (residual independence)
    L_G   = sum_{k != l} KL(Bern(sigmoid(L_kl)) || Bern(p0))       (edge sparsity)
    L_O   = (log N / 2) |A|      (edge_occam="bic"; N = rows the likelihood scores)

``w_G`` converts nats of the graph terms into loss units: ``lambda_G / (d (d - 1))`` (the
paper's weighted eq. 7, a mean KL per edge logit; ``graph_objective="weighted"``) or the
negative ELBO's own scale ``1 / (N d)`` (``"elbo"``; ``2 / (N d)`` with unit noise, whose MSE
is twice the Gaussian NLL per term). ``L_O`` is the Laplace / BIC Occam factor of one
mechanism parameter per edge: the MLPs are point estimates, so the likelihood never charges
an edge that does not help, and such an edge's posterior stays at the prior p0 (with
``P(pos(i) < pos(j)) ~ 1/2`` about ``p0 / 2`` per false node pair, ~3.5 expected false edges
at d = 10, p0 = 0.1). With ``L_O`` an edge is kept only when it improves the log likelihood
by more than ``log(N) / 2`` nats: in the KL's units that is the prior log odds shifted by
``-log(N) / 2``.

With ``n_graph_mc = S`` DAG samples per step the eq. 7 terms are averaged over them; with
``order_grad="st+score"`` the surrogate ``(1/S) sum_s (L_s - b_s) log PL(pi_s)`` is added (the
score-function gradient of the ordering, ``L_s`` the per-sample loss, ``b_s`` the mean of the
other samples' losses, or a running mean when S = 1): the straight-through SoftSort gradient
alone left the ordering near uniform.

HSIC is the biased estimator ``tr(K_i H K_j H) / (n - 1)^2`` with RBF kernels whose
bandwidth is the mean squared residual distance of the node (not differentiated).
The paper applies its L1 "to the logit vector"; an L1 on raw logits pulls them to 0
(probability 1/2), so here it acts on the probabilities sigmoid(zeta), the expected
number of targets (as in BaCaDI and DCDI).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pipeline_lib.models.dpdag import DPDAG
from pipeline_lib.models.metacadi.config import MetaCaDIConfig
from pipeline_lib.models.metacadi.likelihood import (NodeMLP, Params, gradient_adapt, masked_inputs, per_task,
                                                     ridge_solve, with_constant)
from pipeline_lib.models.metacadi.targets import TargetPredictor, row_features, sample_targets


@dataclass
class Adapted:
    """Task-adapted likelihood: ``w: (T, d, F)`` last layers; ``obs`` / ``intv`` per-task
    copies of ``Theta_obs`` / ``Theta'_int`` (None: the shared weights). ``support``: the
    closed form's masked support inputs and features ``(z, H)``, which the ridge solve has
    computed already; :meth:`MetaCaDIModel.predict` on that support set reuses them (the same
    numbers, one per-node MLP pass less per adaptation). None after a MAML inner loop, whose
    features at the final parameters were never computed."""

    w: torch.Tensor
    obs: Params | None = None
    intv: Params | None = None
    support: tuple[torch.Tensor, torch.Tensor] | None = None


def hsic_pairs(resid: torch.Tensor) -> torch.Tensor:
    """``resid: (T, n, d)`` -> ``(T,)`` mean off-diagonal HSIC between the nodes' residuals."""
    t, n, d = resid.shape
    r = resid.transpose(1, 2)  # (T, d, n)
    dist = (r[..., :, None] - r[..., None, :]) ** 2  # (T, d, n, n)
    bw = dist.detach().mean((-1, -2)).clamp_min(1e-6)  # (T, d)
    k = torch.exp(-dist / bw[..., None, None])
    kc = k - k.mean(-1, keepdim=True) - k.mean(-2, keepdim=True) + k.mean((-1, -2), keepdim=True)
    hs = torch.einsum("tiab,tjab->tij", kc, k) / (n - 1) ** 2  # (T, d, d)
    off = hs.sum((-1, -2)) - hs.diagonal(dim1=-2, dim2=-1).sum(-1)
    return off / (d * (d - 1))


class MetaCaDIModel(nn.Module):
    """All task-shared parameters of MetaCaDI on ``d`` nodes (module docstring)."""

    def __init__(self, d: int, cfg: MetaCaDIConfig):
        super().__init__()
        gen = torch.Generator().manual_seed(cfg.seed)
        self.d, self.cfg = d, cfg
        self.dag = DPDAG(d, cfg.tau_perm, cfg.tau_edge, cfg.edge_logit_init, cfg.edge_space)
        hid = [cfg.hidden] * cfg.layers
        self.f_obs = NodeMLP(d, [d, *hid, 1], gen)
        self.h_int = NodeMLP(d, [d, *hid, cfg.feat_dim], gen, out_act=True)
        self.log_sigma = nn.Parameter(torch.zeros(d))  # used with noise="learned"
        self.w0 = nn.Parameter(torch.zeros(d, cfg.feat_dim + 1))  # MAML initialisation of w
        self.register_buffer("loss_baseline", torch.zeros(()))  # score-function baseline (n_graph_mc = 1)
        with torch.random.fork_rng(devices=[]):  # nn.Linear initialises from the global stream
            torch.manual_seed(cfg.seed)
            self.predictor = TargetPredictor(d, cfg.predictor, cfg.embed_dim, cfg.predictor_hidden)

    # ------------------------------------------------------------------ likelihood
    def predict(self, x: torch.Tensor, adj: torch.Tensor, ad: Adapted, on_support: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: (T, n, d)`` -> predictions of ``f`` and ``f^I_t``, both ``(T, n, d)``.
        ``on_support``: ``x`` is the support set ``ad`` was adapted on (its cached inputs and
        features are used when it has them)."""
        if on_support and ad.support is not None:
            z, h = ad.support
        else:
            z = masked_inputs(x, adj)  # (T, d, n, d)
            h = with_constant(self.h_int(z, ad.intv))  # (T, d, n, F)
        f = self.f_obs(z, ad.obs)[..., 0]  # (T, d, n)
        f_int = (h @ ad.w[..., None])[..., 0]  # (T, d, n)
        return f.transpose(1, 2), f_int.transpose(1, 2)

    def adapt(self, x_s: torch.Tensor, adj: torch.Tensor, create_graph: bool = False) -> Adapted:
        """Task-specific parameters from the support sets ``x_s: (T, n_s, d)`` (:mod:`.likelihood`)."""
        cfg = self.cfg
        z = masked_inputs(x_s, adj)  # (T, d, n_s, d)
        y = x_s.transpose(1, 2)  # (T, d, n_s)
        if cfg.inner == "closed_form":
            h = with_constant(self.h_int(z))
            return Adapted(w=ridge_solve(h, y, cfg.ridge_lambda), support=(z, h))
        t = x_s.shape[0]
        n_int = len(self.h_int.params())
        full = cfg.inner == "full_maml"
        shared = self.h_int.params() + [self.w0] + (self.f_obs.params() if full else [])

        def support_loss(p: Params) -> torch.Tensor:
            h = with_constant(self.h_int(z, p[:n_int]))
            loss = ((y - (h @ p[n_int][..., None])[..., 0]) ** 2).mean((1, 2)).sum()
            if full:
                loss = loss + ((y - self.f_obs(z, p[n_int + 1:])[..., 0]) ** 2).mean((1, 2)).sum()
            return loss

        with torch.enable_grad():
            p = gradient_adapt(support_loss, per_task(shared, t), cfg.inner_steps, cfg.inner_lr, create_graph)
        return Adapted(w=p[n_int], intv=p[:n_int], obs=p[n_int + 1:] if full else None)

    # ------------------------------------------------------------------ targets
    def target_logits(self, x_s: torch.Tensor, adj: torch.Tensor, ad: Adapted) -> torch.Tensor:
        """``zeta: (T, d)`` from the support sets and their adapted likelihood."""
        f, f_int = self.predict(x_s, adj, ad, on_support=True)
        return self.predictor(row_features(x_s, f, f_int))

    @torch.no_grad()
    def target_probs(self, x_s: torch.Tensor, n_graphs: int, generator: torch.Generator) -> torch.Tensor:
        """``E_{A ~ q}[sigmoid(zeta_t(A))]: (T, d)`` for support sets ``x_s: (T, n, d)``: the
        ``n_graphs`` DAG samples are stacked on the task axis (one batched adaptation)."""
        t = x_s.shape[0]
        adj = self.dag.sample(n_graphs, generator).repeat_interleave(t, dim=0)  # (S T, d, d)
        xs = x_s.repeat(n_graphs, 1, 1)  # (S T, n, d), graph-major like adj
        ad = self.adapt(xs, adj)
        ad = Adapted(w=ad.w.detach(), obs=_detach(ad.obs), intv=_detach(ad.intv), support=_detach(ad.support))
        probs = torch.sigmoid(self.target_logits(xs, adj, ad))
        return probs.reshape(n_graphs, t, self.d).mean(0)

    # ------------------------------------------------------------------ objective
    def loss(self, x_s: torch.Tensor, x_q: torch.Tensor, generator: torch.Generator, occam_scale: float = 1.0
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 7 on support sets ``x_s: (T, n_s, d)`` and query sets ``x_q: (T, n_q, d)``; the Occam
        term times ``occam_scale`` (its warm-up)."""
        cfg = self.cfg
        parts = {"recon": 0.0, "targets": 0.0, "hsic": 0.0, "edges": 0.0}
        kl_weight, occam_weight = self.graph_weights()
        occam_weight *= occam_scale
        samples, orders = [], []
        for _ in range(cfg.n_graph_mc):
            adj, order = self.dag.sample(1, generator, return_order=True)
            adj = adj[0]
            ad = self.adapt(x_s, adj, create_graph=not cfg.first_order)
            zeta = self.target_logits(x_s, adj, ad)  # (T, d)
            m = sample_targets(zeta, cfg.tau_target, generator)[:, None, :]  # (T, 1, d)
            f, f_int = self.predict(x_q, adj, ad)
            resid = x_q - ((1 - m) * f + m * f_int)
            if cfg.noise == "unit":
                recon = (resid**2).mean()
            else:  # Gaussian NLL up to a constant, learned per-node noise scale
                recon = (0.5 * (resid / self.log_sigma.exp()) ** 2 + self.log_sigma).mean()
            sparsity = torch.sigmoid(zeta).mean()
            hsic = hsic_pairs(resid[:, : cfg.n_hsic]).mean() if cfg.lambda_H > 0 else torch.zeros(())
            edges = adj.sum()  # straight-through: the Occam term reaches the edge logits and the ordering
            samples.append(recon + cfg.lambda_I * sparsity + cfg.lambda_H * hsic + occam_weight * edges)
            orders.append(order)
            for key, val in (("recon", recon), ("targets", sparsity), ("hsic", hsic), ("edges", edges)):
                parts[key] += float(val.detach()) / cfg.n_graph_mc
        per_sample = torch.stack(samples)  # (S,)
        total = per_sample.mean()
        if cfg.order_grad == "st+score":  # score-function gradient of the ordering, with a baseline
            values = per_sample.detach()
            s = len(values)
            if s > 1:  # leave-one-out mean of the other samples
                baseline = (values.sum() - values) / (s - 1)
            else:  # running mean of earlier steps' losses
                baseline = self.loss_baseline.expand(1).clone()
                self.loss_baseline.mul_(0.9).add_(0.1 * values[0])
            logp = self.dag.order_log_prob(torch.cat(orders))  # (S,)
            total = total + ((values - baseline) * logp).mean()
        kl = self.dag.kl_to_bernoulli(cfg.edge_prior)
        parts["edge_kl"] = float(kl.detach()) / self.dag.n_edge_params
        return total + kl_weight * kl, parts

    def graph_weights(self) -> tuple[float, float]:
        """Loss units per nat of the graph terms: ``(w_KL, w_Occam)``, the weights of the summed
        edge KL and of the edge count of each DAG sample (module docstring, L_G and L_O)."""
        cfg = self.cfg
        n_rows = (cfg.n_train_tasks + int(cfg.use_obs)) * cfg.n_query  # rows the likelihood scores
        if cfg.graph_objective == "elbo":  # the negative ELBO divided by the n_rows d likelihood terms
            kl_weight = (2.0 if cfg.noise == "unit" else 1.0) / (n_rows * self.d)
        else:
            kl_weight = cfg.lambda_G / self.dag.n_edge_params
        occam = 0.5 * math.log(n_rows) if cfg.edge_occam == "bic" else 0.0
        return kl_weight, kl_weight * occam


def _detach(params: Params | None) -> Params | None:
    return None if params is None else type(params)(p.detach() for p in params)
