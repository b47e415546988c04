"""Per-dataset additive-noise-model (ANM) reference for Cond-FiP, given the true graph.

For a known DAG ``G`` every node is regressed on its parents::

    x_v = f_v(x_pa(v)) + n_v,      n_v = x_v - f_v(x_pa(v))   (residuals = abducted noise)

* ``kind="linear"``: ``f_v(x) = b_v + beta_v^T x_pa(v)`` by least squares (ridge
  ``lambda ||beta_v||^2`` on standardised inputs, ``lambda = ridge * n``);
* ``kind="mlp"``: ``f_v(x) = m_v + s_v (b_v + beta_v^T z_pa + w_v^T act(U_v^T z_pa + c_v))`` on
  standardised ``z = (x - m) / s``, a linear skip plus one hidden layer per node, all nodes
  fitted at once (independent parameters, the sum of per-node mean squared errors) by
  full-batch Adam with weight decay; a random ``val_frac`` of the rows picks, per node, the
  step with the smallest held-out error;
* ``kind="gp"``: ``f_v`` is the posterior mean of a Gaussian-process regression of ``z_v`` on
  ``z_pa(v)`` (standardised), kernel ``c + s_l^2 z^T z' + s_f^2 exp(-|(z - z') / ell|^2 / 2)``
  (a constant, a linear and an ARD squared-exponential part) plus noise ``s_n^2``, the
  hyperparameters by maximising the log marginal likelihood (type-II ML; Adam on the logs,
  all nodes at once, exact Cholesky in float64). The RFF mechanisms of the Cond-FiP priors are
  draws from (an approximation of) such a GP, so this is the per-dataset regression of the right
  model class there: the reference that says how far 400 rows take any method.

Generation is ancestral sampling in a topological order of ``G`` (batched over samples):
``x_v = a`` for an intervened node, else ``f_v(x_pa(v)) + n_v``, from given noise or from
fresh noise drawn per node, independently, from the empirical law of that node's
residuals (a bootstrap). The interventional density is the Gaussian KDE of
:class:`pipeline_lib.models.cond_fip.answer.SampledInterventional` on generated samples.
These are the per-dataset baselines Cond-FiP is compared with on identical data.
"""

from __future__ import annotations

from typing import Literal, Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from pipeline_lib.metrics.graph import is_dag
from pipeline_lib.posterior import SampledInterventional, SCMGenerator, check_intervention, check_rows


class ANMConfig(BaseModel):
    """Settings of :func:`fit_anm` (``hidden``..``val_frac`` apply to ``kind="mlp"`` only,
    ``gp_*`` to ``kind="gp"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["linear", "mlp", "gp"] = "linear"
    ridge: float = Field(1e-6, ge=0.0, description="ridge per row on standardised parents (linear)")
    hidden: int = Field(32, ge=1)
    activation: Literal["tanh", "relu", "gelu"] = "tanh"
    steps: int = Field(600, ge=1)
    lr: float = Field(1e-2, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    val_frac: float = Field(0.2, ge=0.0, lt=1.0)
    eval_every: int = Field(20, ge=1)
    seed: int = 0
    gp_steps: int = Field(30, ge=1, description="Adam steps on the log marginal likelihood (gp)")
    gp_lr: float = Field(0.1, gt=0.0, description="Adam step size on the log hyperparameters (gp)")


def topological_order(adj: np.ndarray) -> np.ndarray:
    """Nodes of the DAG ``adj`` (``A[i, j] = 1`` iff ``i -> j``), parents first (Kahn)."""
    a = np.asarray(adj, dtype=bool).copy()
    indeg = a.sum(0)
    order, ready = [], list(np.flatnonzero(indeg == 0))
    while ready:
        v = ready.pop()
        order.append(v)
        for c in np.flatnonzero(a[v]):
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    return np.asarray(order, dtype=np.int64)


class ANMGenerator(SampledInterventional, SCMGenerator):
    """A fitted additive-noise SCM on a known DAG (module docstring).

    ``mech(x) -> f(x)``: ``(n, d) -> (n, d)``, entry ``v`` a function of ``x_pa(v)``; ``mech_node(x, v)``
    its column ``v`` alone (ancestral sampling asks one node at a time; default: ``mech(x)[:, v]``);
    ``residuals: (N, d)`` of the fitting rows (the bootstrap pool of fresh noise). A fit whose
    mechanisms are not additive overrides :meth:`predict_noise` and :meth:`_ancestral`
    (:class:`pipeline_lib.baselines.dowhy_gcm.GCMGenerator`); the noise and sampling stay these.
    """

    def __init__(self, adjacency: np.ndarray, mech, residuals: np.ndarray, kind: str, mech_node=None):
        self.adjacency = np.asarray(adjacency, dtype=np.uint8)
        self.n_nodes = int(self.adjacency.shape[0])
        self.order = topological_order(self.adjacency)
        self.mech = mech
        self.mech_node = mech_node or (lambda q, v: mech(q)[:, v])
        self.residuals = residuals
        self.kind = kind

    def predict_noise(self, x: np.ndarray) -> np.ndarray:
        """``n = x - f(x)``, ``(n, d)``."""
        x = check_rows(x, self.n_nodes, "x")
        return x - self.mech(x)

    def _noise(self, n: int, rng: np.random.Generator | None, noise: np.ndarray | None) -> np.ndarray:
        if noise is not None:
            noise = check_rows(noise, self.n_nodes, "noise")
            if len(noise) != n:
                raise ValueError(f"noise has {len(noise)} rows but n={n}")
            return noise
        rng = np.random.default_rng() if rng is None else rng
        idx = rng.integers(0, len(self.residuals), size=(n, self.n_nodes))
        return self.residuals[idx, np.arange(self.n_nodes)[None, :]]

    def _ancestral(self, noise: np.ndarray, intervention: Mapping[int, float]) -> np.ndarray:
        mask, values = check_intervention(intervention, self.n_nodes)
        x = np.zeros_like(noise)
        for v in self.order:  # loop over nodes; samples are batched
            x[:, v] = values[v] if mask[v] else self.mech_node(x, v) + noise[:, v]
        return x

    def sample_observational(self, n: int, rng: np.random.Generator | None = None,
                             noise: np.ndarray | None = None) -> np.ndarray:
        """``(n, d)`` ancestral samples from given or bootstrapped noise."""
        return self._ancestral(self._noise(n, rng, noise), {})

    def sample_do(self, intervention: Mapping[int, float], n: int, rng: np.random.Generator | None = None,
                  noise: np.ndarray | None = None) -> np.ndarray:
        """``(n, d)`` ancestral samples under the hard intervention ``{node: value}``."""
        return self._ancestral(self._noise(n, rng, noise), intervention)


def _fit_linear(x: np.ndarray, adj: np.ndarray, ridge: float):
    """Per-node ridge regression on standardised parents; returns ``f(x) = b + x W``."""
    n, d = x.shape
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 0, std, 1.0)
    z = (x - mean) / std
    coef = np.zeros((d, d))  # coef[i, v]: coefficient of x_i in f_v (data units)
    bias = mean.copy()
    for v in range(d):  # one small solve per node
        pa = np.flatnonzero(adj[:, v])
        if pa.size == 0:
            continue
        zp = z[:, pa]
        beta = np.linalg.solve(zp.T @ zp + ridge * n * np.eye(pa.size), zp.T @ (x[:, v] - mean[v]))
        coef[pa, v] = beta / std[pa]
        bias[v] = mean[v] - (mean[pa] / std[pa]) @ beta
    return lambda q: bias + q @ coef


_ACTS = {"tanh": torch.tanh, "relu": torch.relu, "gelu": torch.nn.functional.gelu}


def _fit_mlp(x: np.ndarray, adj: np.ndarray, cfg: ANMConfig):
    """All per-node MLPs at once (module docstring); returns ``f``."""
    n, d = x.shape
    gen = torch.Generator().manual_seed(cfg.seed)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 0, std, 1.0)
    z = torch.as_tensor((x - mean) / std, dtype=torch.float32)
    pa = torch.as_tensor(adj, dtype=torch.float32)  # (d_in, d_out)
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(cfg.val_frac * n)) if n >= 10 else 0
    val, fit = perm[:n_val], perm[n_val:]
    h, act = cfg.hidden, _ACTS[cfg.activation]
    fan = pa.sum(0).clamp_min(1.0)  # (d,) parents per node
    params = {
        "u": (torch.randn(d, d, h, generator=gen) / fan.sqrt()[None, :, None]),  # (d_in, d_out, H)
        "c": torch.zeros(d, h),
        "w": torch.randn(d, h, generator=gen) * 0.1,
        "beta": torch.zeros(d, d),  # (d_in, d_out)
        "b": torch.zeros(d),
    }
    for p in params.values():
        p.requires_grad_(True)

    def forward(zz: torch.Tensor, p: dict) -> torch.Tensor:
        hid = act(torch.einsum("ni,ivh->nvh", zz, p["u"] * pa[:, :, None]) + p["c"])  # (n, d, H)
        return p["b"] + zz @ (p["beta"] * pa) + (hid * p["w"]).sum(-1)  # (n, d)

    opt = torch.optim.Adam(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = {k: v.detach().clone() for k, v in params.items()}
    best_err = torch.full((d,), float("inf"))
    score_rows = val if n_val > 0 else fit
    for step in range(cfg.steps):
        opt.zero_grad()
        loss = (forward(z[fit], params) - z[fit]).square().mean(0).sum()
        loss.backward()
        opt.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            with torch.no_grad():
                err = (forward(z[score_rows], params) - z[score_rows]).square().mean(0)  # (d,)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                # per node v: output-side slices of every parameter
                best["u"][:, better] = params["u"].detach()[:, better]
                best["c"][better] = params["c"].detach()[better]
                best["w"][better] = params["w"].detach()[better]
                best["beta"][:, better] = params["beta"].detach()[:, better]
                best["b"][better] = params["b"].detach()[better]
    m_t, s_t = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)

    @torch.no_grad()
    def mech(q: np.ndarray) -> np.ndarray:
        zq = (torch.as_tensor(q, dtype=torch.float32) - m_t) / s_t
        return (forward(zq, best) * s_t + m_t).double().numpy()

    return mech


def _fit_gp(x: np.ndarray, adj: np.ndarray, cfg: ANMConfig):
    """Per-node GP regressions, all nodes at once (module docstring); returns ``f``."""
    n, d = x.shape
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 0, std, 1.0)
    z = torch.as_tensor((x - mean) / std, dtype=torch.float64)  # (n, d)
    has_pa = adj.any(0)
    nodes = np.flatnonzero(has_pa)  # roots keep f_v = their mean
    pa = torch.as_tensor(adj[:, nodes], dtype=torch.float64).T  # (V, d_in) parent mask per fitted node
    y = z[:, nodes].T  # (V, n)
    v_n = len(nodes)
    eye = torch.eye(n, dtype=torch.float64)
    # log hyperparameters per fitted node: ARD lengthscales (V, d_in), s_f, s_l, s_n, constant
    p = {"ell": torch.zeros(v_n, d, dtype=torch.float64), "sf": torch.full((v_n,), np.log(0.7), dtype=torch.float64),
         "sl": torch.full((v_n,), np.log(0.3), dtype=torch.float64),
         "sn": torch.full((v_n,), np.log(0.5), dtype=torch.float64)}

    def kernel(a: torch.Tensor, b: torch.Tensor, q: dict, sel=slice(None)) -> torch.Tensor:
        """``k(a, b)`` of the fitted nodes ``sel``: ``(V, m, n)`` from ``a (m, d)``, ``b (n, d)``."""
        msk = pa[sel]
        inv = msk * torch.exp(-q["ell"][sel])  # (V, d_in): 1 / ell on parents, 0 elsewhere
        sa, sb = a[None] * inv[:, None], b[None] * inv[:, None]  # (V, m, d), (V, n, d)
        sq = (sa.square().sum(-1)[:, :, None] + sb.square().sum(-1)[:, None, :]
              - 2.0 * sa @ sb.transpose(1, 2)).clamp_min(0.0)
        lin = (a[None] * msk[:, None]) @ (b[None] * msk[:, None]).transpose(1, 2)
        return (1.0 + torch.exp(2 * q["sl"][sel])[:, None, None] * lin
                + torch.exp(2 * q["sf"][sel])[:, None, None] * torch.exp(-0.5 * sq))

    def chol(q: dict) -> torch.Tensor:
        k = kernel(z, z, q) + (torch.exp(2 * q["sn"]) + 1e-6)[:, None, None] * eye
        return torch.linalg.cholesky(k)

    if v_n:
        for t in p.values():
            t.requires_grad_(True)
        opt = torch.optim.Adam(p.values(), lr=cfg.gp_lr)
        for _ in range(cfg.gp_steps):
            opt.zero_grad()
            lk = chol(p)
            alpha = torch.cholesky_solve(y[..., None], lk)[..., 0]  # (V, n)
            nll = 0.5 * (y * alpha).sum(-1) + torch.log(torch.diagonal(lk, dim1=1, dim2=2)).sum(-1)
            (nll.sum() / n).backward()
            opt.step()
        with torch.no_grad():
            best = {k: t.detach() for k, t in p.items()}
            alpha = torch.cholesky_solve(y[..., None], chol(best))[..., 0]
    m_t, s_t = torch.as_tensor(mean), torch.as_tensor(std)

    slot = np.full(d, -1)
    slot[nodes] = np.arange(v_n)

    @torch.no_grad()
    def mech(q: np.ndarray, sel=slice(None)) -> np.ndarray:
        out = np.broadcast_to(mean, q.shape).copy()
        if v_n:
            zq = (torch.as_tensor(q, dtype=torch.float64) - m_t) / s_t
            fz = (kernel(zq, z, best, sel) @ alpha[sel, :, None])[..., 0]  # (V, m)
            cols = nodes[sel]
            out[:, cols] = (fz.T * s_t[cols] + m_t[cols]).numpy()
        return out

    def mech_node(q: np.ndarray, v: int) -> np.ndarray:
        return mech(q, slice(slot[v], slot[v] + 1))[:, v] if slot[v] >= 0 else np.full(len(q), mean[v])

    return mech, mech_node


def check_scm_data(data: dict, who: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, adj)`` of a dataset fitted as an SCM on a given DAG: ``x_obs (N >= 2, d)`` finite
    (float64) and ``adjacency (d, d)`` acyclic (uint8, ``A[i, j] = 1`` iff ``i -> j``); errors
    name the field (``who``: the method, for a missing field)."""
    for key in ("x_obs", "adjacency"):
        if key not in data:
            raise ValueError(f"{who} data is missing field {key!r}")
    x = np.asarray(data["x_obs"], dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x_obs must be (N >= 2, d), got {x.shape}")
    d = x.shape[1]
    if not np.isfinite(x).all():
        raise ValueError("x_obs contains NaN/inf")
    adj = np.asarray(data["adjacency"])
    if adj.shape != (d, d):
        raise ValueError(f"adjacency must be ({d}, {d}) to match x_obs, got {adj.shape}")
    adj = (adj != 0).astype(np.uint8)
    if np.any(np.diag(adj)) or not is_dag(adj):
        raise ValueError("adjacency is not a DAG")
    return x, adj


def fit_anm(data: dict, config: ANMConfig | Mapping | None = None) -> ANMGenerator:
    """Fit the ANM of the module docstring to one dataset.

    Args:
        data: :func:`pipeline_lib.taskdata.restrict` of one task: ``x_obs (N, d)`` and
            ``adjacency (d, d)`` (the true DAG, or any DAG the caller supplies).
        config: :class:`ANMConfig` or a dict of its fields.
    """
    cfg = config if isinstance(config, ANMConfig) else ANMConfig(**(config or {}))
    x, adj = check_scm_data(data, "ANM")
    if cfg.kind == "gp":
        mech, mech_node = _fit_gp(x, adj, cfg)
    else:
        mech, mech_node = (_fit_linear(x, adj, cfg.ridge) if cfg.kind == "linear" else _fit_mlp(x, adj, cfg)), None
    return ANMGenerator(adj, mech, x - mech(x), cfg.kind, mech_node)
