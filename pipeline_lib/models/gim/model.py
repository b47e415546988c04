"""The GIM model: a causal model M = (G, theta) and the generative intervention model phi.

Causal model (Gaussian additive noise, standardized units). With the DAG ``A`` (row = parent),

    x_j = f_j(A_j * x; theta) + sigma_j eps_j,   eps_j ~ N(0, 1),

``f_j`` linear (``x^T (A * W)_j + b_j``) or a per-node MLP of the masked parents (the
``NodeMLP`` / ``masked_inputs`` of :mod:`pipeline_lib.models.metacadi.likelihood`); the graph
distribution ``q(A)`` is the shared DP-DAG (:mod:`pipeline_lib.models.dpdag`).

Generative intervention model. An MLP ``phi`` maps the features ``gamma_e: (p,)`` of an
experiment to target logits ``l_e``, shifts ``s_e`` and log-scales ``r_e`` (all ``(d,)``):

    I_ej ~ Bernoulli(sigmoid(l_ej)),
    intervened mechanism of a target:  x_j = f_j(A_j * x) + s_ej + exp(r_ej) sigma_j eps_j,

so that ``p(x; M, gamma, phi) = sum_I p(I | gamma) p(x; M, I, psi(gamma))`` is defined for
any ``gamma``, seen or not. The observational experiment has no targets.

Dose response (``dose_feature`` set: ``gamma = [g, u]`` with ``u`` a log dose). ``phi`` reads the
drug features ``g`` only, and the dose enters through a Hill curve, a sigmoid in the log dose,

    l_e = l(g),   s_e = rho_e a(g),   r_e = rho_e b(g),
    rho_e = sigmoid(softplus(n0 + dn(g)) (u - c0 - dc(g))),   dn, dc ~ N(0, s_dose^2),

(``c0 + dc``: the log EC50): a drug keeps its targets at every dose, its shift and log-scale
grow monotonically with the dose and vanish as the dose goes to zero (the intervened mechanism
then equals the observational one). The curve is shared by all drugs (``n0, c0``) up to
per-drug deviations under a Gaussian prior (a hierarchical model): a drug seen at one or two
doses cannot identify its own EC50 apart from its amplitude, so it borrows the shared shape; a
plain MLP of ``[g, u]`` need not even be monotone in ``u`` there. The compositional drug x dose
form of CPA-style perturbation models, within GIM's class: phi is still a network from features
to targets and psi.

Objective: joint MAP of ``(q(A), theta, sigma, phi)`` over all seen experiments ``e`` with
rows ``D_e``. Per experiment and node the two conditional log likelihoods,

    L0_ej = sum_n log N(x_nj; f_j, sigma_j^2),   L1_ej = sum_n log N(x_nj; f_j + s_ej, e^{2 r_ej} sigma_j^2),

give ``log p(D_e | I) = sum_j (1 - I_j) L0_ej + I_j L1_ej`` (the likelihood factorises over
nodes given A). The marginal over targets is estimated by Monte Carlo over S relaxed
(Gumbel-softmax) target samples ``I~_s = sigmoid((l_e + Logistic) / tau)`` (the paper),

    log p(D_e) ~= log (1/S) sum_s exp(log p(D_e | I~_s)),

or, with ``target_marginal="exact"``, in closed form, ``sum_j logaddexp(log(1 - p_ej) + L0_ej,
log p_ej + L1_ej)`` (possible because the targets are independent per node). The likelihood
is averaged over ``n_graph_mc`` straight-through DAG samples per step. With ``N`` the
likelihood entries (rows x d) of the minibatch and ``N_D`` those of the whole training data,

    loss = -(sum_e log p(D_e) + log p(D_obs | I = 0)) / N
           + [ ||theta||^2 / (2 s_theta^2) + ||phi||^2 / (2 s_phi^2)
               + sum_e (||s_e||^2 / (2 s_s^2) + ||r_e||^2 / (2 s_r^2))       (Gaussian priors)
               + sum_e (dn_e^2 + dc_e^2) / (2 s_dose^2)                      (with a dose feature)
               + lambda_I sum_ej sigmoid(l_ej)                               (target sparsity)
               + lambda_G KL(q_edges || Bern(p0)) ] / N_D                    (edge sparsity),

an unbiased minibatch estimate of the MAP objective per entry (``lambda_I``: nats per expected
target, ``lambda_G``: nats per unit of edge KL, summed over the edge logits in use). With
``prior_scale="batch"`` the priors are divided by ``N`` instead (the first version: every
prior then weighed N_D / N ~ 1.8 times more at 64 rows per experiment, enough for
``lambda_I`` to drop the small shifts of low doses as targets). ``lambda_G`` may ramp from 0
over the first ``sparsity_warmup`` of the steps (:mod:`.fit`).

Graph: DP-DAG edge logits per NODE pair masked by the sampled ordering (``edge_space="node"``;
in position space a logit collected the evidence of whichever node pair the orderings put at
its positions), the ordering's gradient from SoftSort straight-through plus the score-function
estimator over the ``n_graph_mc`` samples (``order_grad="st+score"``, leave-one-out baseline).
The ordering is the hard part (with the true ordering fixed the edges are recovered, from a
uniform start they are not; README), so the fit starts the ordering scores from the seen
experiments' mean shifts (``order_init``, :mod:`.fit`).

Graph stage (``prune``, :mod:`.prune`, after the fit and before the refit): the benchmark preset
uses ``bic+order``: the MAP ordering refined by local search on a per-node BIC (GIM's model
class with per-experiment shift targets, additive basis) and each node's best parents kept; its
result is the MAP DAG the mechanisms are refitted on and generate with, and the graph posterior
keeps only its edges (the orderings' uncertainty stays). ``bic`` only prunes the MAP DAG.

Refit (``refit_steps``, ``refit_init``): mechanisms, noise and phi on the fixed MAP DAG. With
``fresh_phi`` (the preset) phi is drawn afresh and ``sigma`` set to the observational residuals'
std under the kept mechanisms: fitted to the pre-stage DAG, the noise scales were off and phi
compensated them with targets in every experiment (p ~ 1, shift ~ 0, a scale factor) that a
continued refit did not leave, and that phi then extrapolated to unseen features.

The priors follow the paper's appendix in kind (Gaussian on mechanisms and phi, sparse
targets, sparse graphs); acyclicity holds by construction of the DP-DAG instead of the
NO-BEARS penalty.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline_lib.models.dpdag import DPDAG
from pipeline_lib.models.gim.config import GIMConfig, GIMInputError
from pipeline_lib.models.metacadi.likelihood import NodeMLP, masked_inputs
from pipeline_lib.models.metacadi.targets import _mlp, sample_targets

LOG_2PI = math.log(2 * math.pi)




def gaussian_terms(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log N(x; mean, exp(log_std)^2)``."""
    return -0.5 * ((x - mean) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * LOG_2PI


def check_dose_feature(dose: int | None, p: int) -> None:
    """``dose`` (a feature index or None) must index one of the ``p`` features."""
    if dose is not None and not 0 <= dose < p:
        raise GIMInputError(f"dose_feature={dose} is not a feature index (p = {p})")


def split_dose(gamma: torch.Tensor, dose: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``gamma: (E, p)`` -> the features phi reads, ``(E, max(p - 1, 1))`` (all but the log dose; a zero
    column when nothing is left), and the log dose ``(E, 1)`` (None without a dose feature)."""
    drug = gamma if dose is None else torch.cat([gamma[:, :dose], gamma[:, dose + 1:]], 1)
    if drug.shape[1] == 0:
        drug = torch.zeros(gamma.shape[0], 1, dtype=gamma.dtype, device=gamma.device)
    return drug, None if dose is None else gamma[:, dose: dose + 1]


def hill_parameters() -> tuple[nn.Parameter, nn.Parameter]:
    """The shared Hill curve's slope before the softplus (softplus = 1 at the start) and log EC50 (0)."""
    return nn.Parameter(torch.full((1,), math.log(math.e - 1))), nn.Parameter(torch.zeros(1))


def hill_response(log_dose: torch.Tensor, hill_raw: torch.Tensor, log_ec50: torch.Tensor, dev: torch.Tensor
                  ) -> torch.Tensor:
    """``sigmoid(softplus(n0 + dn) (u - c0 - dc))``: the Hill curve in the log dose ``u: (E, 1)`` with the
    shared ``n0, c0: (1,)`` and per-experiment deviations ``dev = (dn, dc): (E, 2)``; ``(E, 1)`` in (0, 1)."""
    hill = nn.functional.softplus(hill_raw + dev[:, :1])
    return torch.sigmoid(hill * (log_dose - log_ec50 - dev[:, 1:]))


class GIMModel(nn.Module):
    """All parameters of GIM on ``d`` nodes and ``p`` features (module docstring)."""

    def __init__(self, d: int, p: int, cfg: GIMConfig):
        super().__init__()
        gen = torch.Generator().manual_seed(cfg.seed)
        self.d, self.p, self.cfg = d, p, cfg
        self.n_data_entries = 0  # likelihood entries of the whole training data (set by the fit)
        self.map_before_prune: torch.Tensor | None = None  # set by the fit's pruning (prune='bic')
        self.dag = DPDAG(d, cfg.tau_perm, cfg.tau_edge, cfg.edge_logit_init, cfg.edge_space)
        if cfg.mechanism == "linear":
            self.weight = nn.Parameter(0.1 * torch.randn(d, d, generator=gen))
            self.bias = nn.Parameter(torch.zeros(d))
        else:
            self.f = NodeMLP(d, [d, *[cfg.hidden] * cfg.layers, 1], gen)
        self.log_sigma = nn.Parameter(torch.zeros(d))
        self.init_phi(seed=cfg.seed)

    @torch.no_grad()
    def set_noise_from_observational(self, x_obs: torch.Tensor, adj: torch.Tensor) -> None:
        """``sigma_j`` = the std of ``x_obs_j - f_j(A_j * x_obs)``: the observational rows carry no
        targets, so they alone pin the noise scales (a start that no intervention scale compensates)."""
        resid = x_obs - self.mechanisms(x_obs[None], adj)[0]
        self.log_sigma.copy_(torch.log(resid.std(0).clamp_min(1e-4)))

    @torch.no_grad()
    def reinit_except_graph(self, seed: int, mechanisms: bool = True) -> None:
        """Noise scales, phi and (``mechanisms``) the mechanisms drawn afresh, the DAG kept: the
        refit's ``fresh`` (``fresh_phi``: mechanisms kept) start."""
        gen = torch.Generator().manual_seed(seed)
        if mechanisms and self.cfg.mechanism == "linear":
            self.weight.copy_(0.1 * torch.randn(self.d, self.d, generator=gen))
            self.bias.zero_()
        elif mechanisms:
            fresh = NodeMLP(self.d, [self.d, *[self.cfg.hidden] * self.cfg.layers, 1], gen)
            self.f.load_state_dict(fresh.state_dict())
        self.log_sigma.zero_()
        device = self.log_sigma.device
        self.init_phi(seed=seed)
        self.to(device)

    def init_phi(self, seed: int) -> None:
        """A freshly initialised ``phi`` (also used by the refit with ``refit_init="fresh"``)."""
        cfg, d, p = self.cfg, self.d, self.p
        dose = cfg.dose_feature
        check_dose_feature(dose, p)
        n_in = p if dose is None else p - 1
        n_out = (3 * d if cfg.intervene_scale else 2 * d) + (0 if dose is None else 2)
        with torch.random.fork_rng(devices=[]):  # nn.Linear initialises from the global stream
            torch.manual_seed(seed)
            self.phi = _mlp([max(n_in, 1), *[cfg.phi_hidden] * cfg.phi_layers, n_out])
        with torch.no_grad():
            self.phi[-1].bias[:d].fill_(cfg.target_logit_init)
        if dose is not None:  # the shared Hill curve
            self.hill_raw, self.log_ec50 = hill_parameters()

    # ------------------------------------------------------------------ causal model
    def mechanisms(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """``f(A * x)``: ``x: (T, n, d)``, ``adj: (d, d)`` -> ``(T, n, d)``."""
        if self.cfg.mechanism == "linear":
            return x @ (adj * self.weight) + self.bias
        return self.f(masked_inputs(x, adj))[..., 0].transpose(1, 2)

    def mechanism_params(self) -> list[torch.Tensor]:
        return [self.weight] if self.cfg.mechanism == "linear" else [w for w in self.f.params()]

    # ------------------------------------------------------------------ phi
    def intervention(self, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``gamma: (E, p)`` -> target logits, shifts, log-scales, each ``(E, d)``."""
        return self.phi_outputs(gamma)[:3]

    def phi_outputs(self, gamma: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`intervention` plus, with ``dose_feature``, the drugs' deviations ``(dn, dc): (E, 2)``
        from the shared Hill curve (module docstring; ``None`` without a dose feature)."""
        d = self.d
        drug, log_dose = split_dose(gamma, self.cfg.dose_feature)
        out = self.phi(drug)
        logits, shift = out[:, :d], out[:, d: 2 * d]
        log_scale = out[:, 2 * d: 3 * d] if self.cfg.intervene_scale else torch.zeros_like(shift)
        if log_dose is None:
            return logits, shift, log_scale, None
        dev = out[:, -2:]
        response = hill_response(log_dose, self.hill_raw, self.log_ec50, dev)
        return logits, response * shift, response * log_scale, dev

    # ------------------------------------------------------------------ objective
    def node_logliks(self, x: torch.Tensor, f: torch.Tensor, shift: torch.Tensor, log_scale: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x, f: (E, n, d)``, ``shift, log_scale: (E, d)`` -> ``L0, L1: (E, d)`` (module docstring)."""
        ls = self.log_sigma
        l0 = gaussian_terms(x, f, ls.expand_as(f)).sum(1)
        l1 = gaussian_terms(x, f + shift[:, None], (ls + log_scale)[:, None].expand_as(f)).sum(1)
        return l0, l1

    def experiment_logliks(self, l0: torch.Tensor, l1: torch.Tensor, logits: torch.Tensor,
                           generator: torch.Generator | None) -> torch.Tensor:
        """``(E,)`` estimates of ``log p(D_e)`` marginalised over the targets."""
        cfg = self.cfg
        if cfg.target_marginal == "exact":
            lp1, lp0 = nn.functional.logsigmoid(logits), nn.functional.logsigmoid(-logits)
            return torch.logaddexp(lp0 + l0, lp1 + l1).sum(-1)
        e = logits.shape[0]
        rep = logits[:, None].expand(e, cfg.n_target_mc, self.d)
        m = sample_targets(rep, cfg.tau_target, generator)  # (E, S, d) relaxed targets
        ll = ((1 - m) * l0[:, None] + m * l1[:, None]).sum(-1)  # (E, S)
        return torch.logsumexp(ll, dim=1) - math.log(cfg.n_target_mc)

    def loss(self, x_obs: torch.Tensor, x_int: torch.Tensor, gamma: torch.Tensor,
             generator: torch.Generator | None, lambda_G: float | None = None, adj: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The MAP loss of the module docstring on ``x_obs: (n_o, d)``, ``x_int: (E, n, d)``,
        ``gamma: (E, p)``; ``lambda_G`` overrides the config's (the warm-up ramp); a fixed
        ``adj: (d, d)`` replaces the DP-DAG samples (the refit on the MAP DAG: no edge term)."""
        cfg = self.cfg
        lam_g = cfg.lambda_G if lambda_G is None else lambda_G
        logits, shift, log_scale, dose_dev = self.phi_outputs(gamma)
        n_entries = (x_obs.shape[0] + x_int.shape[0] * x_int.shape[1]) * self.d
        # the priors' denominator: the whole data's entries (set by the fit) or the minibatch's
        n_prior = self.n_data_entries if cfg.prior_scale == "data" and self.n_data_entries else n_entries
        per_sample, orders = [], []
        for _ in range(1 if adj is not None else cfg.n_graph_mc):
            if adj is None:
                a, order = self.dag.sample(1, generator, return_order=True)
                a = a[0]
                orders.append(order)
            else:
                a = adj
            f_obs = self.mechanisms(x_obs[None], a)
            ls = self.log_sigma.expand_as(f_obs)
            ll_obs = gaussian_terms(x_obs[None], f_obs, ls).sum()
            l0, l1 = self.node_logliks(x_int, self.mechanisms(x_int, a), shift, log_scale)
            ll_int = self.experiment_logliks(l0, l1, logits, generator).sum()
            per_sample.append(-(ll_obs + ll_int) / n_entries)
        nlls = torch.stack(per_sample)  # (S,) negative log likelihood per entry of each DAG sample
        nll = nlls.mean()
        prior = (sum((w**2).sum() for w in self.mechanism_params()) / (2 * cfg.theta_prior_std**2)
                 + sum((w**2).sum() for n, w in self.phi.named_parameters() if n.endswith("weight"))
                 / (2 * cfg.phi_prior_std**2)
                 + (shift**2).sum() / (2 * cfg.shift_prior_std**2)
                 + (log_scale**2).sum() / (2 * cfg.log_scale_prior_std**2))
        if dose_dev is not None:
            prior = prior + (dose_dev**2).sum() / (2 * cfg.dose_prior_std**2)
        n_targets = torch.sigmoid(logits).sum()
        kl = self.dag.kl_to_bernoulli(cfg.edge_prior) if adj is None else torch.zeros(())
        total = nll + (prior + cfg.lambda_I * n_targets + lam_g * kl) / n_prior
        parts = {"loss": float(total.detach()), "nll": float(nll.detach()), "prior": float(prior.detach()) / n_prior,
                 "targets": float(n_targets.detach()) / logits.numel(), "edge_kl": float(kl.detach())}
        if adj is None and cfg.order_grad == "st+score" and len(orders) > 1:
            # score-function gradient of the ordering: (1/S) sum_s (L_s - b_s) grad log PL(pi_s),
            # b_s the mean of the other samples' likelihood terms (leave-one-out baseline)
            values = nlls.detach()
            baseline = (values.sum() - values) / (len(values) - 1)
            logp = self.dag.order_log_prob(torch.cat(orders))
            total = total + ((values - baseline) * logp).mean()  # zero in expectation: not in parts["loss"]
        return total, parts

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def map_dag(self) -> torch.Tensor:
        """The mode of q(A): nodes by descending order score, edges with sigmoid(L) > 1/2. ``(d, d)``."""
        order = self.dag.order_scores.argsort(descending=True)
        p_hard = nn.functional.one_hot(order, self.d).to(self.dag.edge_logits.dtype)
        on = (self.dag.edge_logits > 0).to(p_hard.dtype)
        if self.dag.edge_space == "node":  # the mode ordering's mask times the node-pair edges
            return (p_hard.T @ self.dag.triu @ p_hard) * on * (1 - torch.eye(self.d, dtype=on.dtype))
        return p_hard.T @ (on * self.dag.triu) @ p_hard

    @torch.no_grad()
    def generate(self, adj: torch.Tensor, eps: torch.Tensor, targets: torch.Tensor, shift: torch.Tensor,
                 log_scale: torch.Tensor, do_mask: torch.Tensor | None = None,
                 do_values: torch.Tensor | None = None) -> torch.Tensor:
        """Ancestral samples ``(n, d)`` for standard noise ``eps: (n, d)`` and per-row ``targets,
        shift, log_scale: (n, d)``; ``do_mask / do_values: (d,)`` clamp nodes (hard do).

        ``d`` sweeps of ``x <- f(A * x) + noise`` reach the DAG's fixed point exactly."""
        noise = (targets * shift) + torch.exp(self.log_sigma + targets * log_scale) * eps
        x = torch.zeros_like(eps)
        for _ in range(self.d):
            x = self.mechanisms(x[None], adj)[0] + noise
            if do_mask is not None:
                x = torch.where(do_mask, do_values, x)
        return x
