"""Mechanism priors f_j of additive-noise SCMs  x_j = f_j(x_pa(j)) + eps_j.

Parameters are drawn per task (``draw_params``, fixed shapes so tasks stack), in the
canonical node order of ``graphs.py``; evaluation (``evaluate``) is vectorised over a batch
of tasks and samples for one node j at a time: ``x: (T, N, d) -> f_j: (T, N)``. Entries of
``x`` for nodes not yet generated are zero and are ignored because only parents enter f_j.

Conventions for parameter arrays of one task (d = d_max; index i = input/parent,
j = node, h = hidden unit, f = Fourier feature):

- linear / bge: ``weights (d, d)`` with ``weights[i, j]`` the coefficient of x_i in x_j's
  equation (zero off the graph), ``intercepts (d,)``.
  linear: ``|W_ij| ~ U[w_min, w_max]``, random sign, intercept 0.
  bge: ``(W, mu, sigma) ~`` the Normal-Wishart prior of the BGe score
  (``pipeline_lib.baselines.bge.sample_bge_parameters``); sigma replaces the noise std.
- nn: ``f_j(x) = sum_h v[j, h] act( sum_i A_ij x_i U[i, j, h] + c[j, h] )`` with
  ``U ~ N(0, 1/max(1, |pa(j)|))``, ``c ~ N(0, 1)``, ``v ~ N(0, nn_output_scale^2 / H)``.
- gp (random Fourier features for the RBF kernel, Rahimi & Recht 2007):
  ``f_j(x) = amp sqrt(2/F) sum_f a[j, f] cos( sum_i A_ij x_i omega[i, j, f] / l_j + b[j, f] )``
  with ``omega ~ N(0, 1)``, ``b ~ U[0, 2 pi]``, ``a ~ N(0, 1)``, ``l_j ~ U[l_min, l_max]``
  (and ``amp_j ~ U[gp_amplitude, gp_amplitude_max]`` per node, ``amp (d,)``, where that is set);
  as F -> inf, f_j is a GP draw with ``k(x, x') = amp^2 exp(-|x_pa - x'_pa|^2 / (2 l_j^2))``.

Root nodes (no parents) get ``f_j = 0`` for nn and gp (and trivially for linear): they are
their noise (plus the intercept for bge).
"""

from __future__ import annotations

import numpy as np


def draw_params(mech_cfg, adj: np.ndarray, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Mechanism parameters of one task with canonical adjacency ``adj: (d, d)``, ``n`` real nodes.

    Returns a dict of float64 arrays with shapes fixed by the config (so tasks stack).
    For ``bge`` the dict also holds ``noise_std (d,)`` which overrides the noise prior.
    """
    d = adj.shape[0]
    a = adj.astype(np.float64)
    kind = mech_cfg.kind
    if kind == "linear":
        magnitude = rng.uniform(mech_cfg.w_min, mech_cfg.w_max, (d, d))
        sign = np.where(rng.random((d, d)) < 0.5, -1.0, 1.0)
        return {"weights": a * magnitude * sign, "intercepts": np.zeros(d)}
    if kind == "bge":
        # the BGe sampler lives with the BGe score (one Normal-Wishart definition); lazy import
        # so the prior package does not depend on the baselines at import time
        try:
            from pipeline_lib.baselines.bge import sample_bge_parameters
        except ImportError as err:
            raise NotImplementedError(
                "mechanism.kind='bge' needs pipeline_lib.baselines.bge.sample_bge_parameters, "
                "which is not available in this checkout"
            ) from err

        w, mu, sd = sample_bge_parameters(
            adj[None, :n, :n].astype(np.float64), rng,
            alpha_mu=mech_cfg.alpha_mu, alpha_w=mech_cfg.alpha_w,
        )
        weights = np.zeros((d, d))
        weights[:n, :n] = np.asarray(w, dtype=np.float64)[0] * a[:n, :n]
        intercepts = np.zeros(d)
        intercepts[:n] = np.asarray(mu, dtype=np.float64)[0]
        noise_std = np.ones(d)
        noise_std[:n] = np.asarray(sd, dtype=np.float64)[0]
        return {"weights": weights, "intercepts": intercepts, "noise_std": noise_std}
    if kind == "nn":
        h = mech_cfg.hidden
        if mech_cfg.nn_input_scale is None:
            n_pa = np.maximum(a.sum(axis=0), 1.0)  # (d,) parents per node
            u = rng.standard_normal((d, d, h)) / np.sqrt(n_pa)[None, :, None]
        else:
            u = rng.standard_normal((d, d, h)) * mech_cfg.nn_input_scale
        c = rng.standard_normal((d, h))
        if mech_cfg.nn_bias_scale != 1.0:
            c *= mech_cfg.nn_bias_scale
        v = rng.standard_normal((d, h)) * (mech_cfg.nn_output_scale / np.sqrt(h))
        out = {"u": u, "c": c, "v": v}
        if mech_cfg.nn_layers > 1:  # drawn after the one-layer parameters: those stay as they were
            n_deep = mech_cfg.nn_layers - 1
            out["w_deep"] = rng.standard_normal((d, n_deep, h, h)) / np.sqrt(h)
            out["c_deep"] = rng.standard_normal((d, n_deep, h)) * mech_cfg.nn_bias_scale
        return out
    if kind == "gp":
        f = mech_cfg.n_features
        omega = rng.standard_normal((d, d, f))
        b = rng.uniform(0.0, 2.0 * np.pi, (d, f))
        coef = rng.standard_normal((d, f))
        ell = rng.uniform(mech_cfg.lengthscale_min, mech_cfg.lengthscale_max, d)
        out = {"omega": omega, "b": b, "a": coef, "lengthscale": ell}
        if mech_cfg.gp_linear_scale > 0:
            out["lin"] = rng.standard_normal((d, d)) * mech_cfg.gp_linear_scale
        if mech_cfg.gp_amplitude_max is not None:  # drawn last: the other parameters stay as they were
            out["amp"] = rng.uniform(mech_cfg.gp_amplitude, mech_cfg.gp_amplitude_max, d)
        return out
    raise ValueError(f"mechanism.kind={kind!r}: unknown mechanism kind")


def _activation(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "leaky_relu":
        return np.where(z > 0, z, 0.01 * z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    raise ValueError(f"mechanism.activation={name!r}: unknown activation")


def evaluate(
    mech_cfg, params: dict[str, np.ndarray], adj: np.ndarray, x: np.ndarray, j: int
) -> np.ndarray:
    """``f_j`` of node ``j`` for a batch: ``params`` stacked over T tasks, ``adj: (T, d, d)``,
    ``x: (T, N, d)`` -> ``(T, N)`` float64."""
    kind = mech_cfg.kind
    if kind in ("linear", "bge"):
        w_j = params["weights"][:, :, j]  # (T, d)
        return (x * w_j[:, None, :]).sum(axis=-1) + params["intercepts"][:, j, None]
    out = _nonlinear(mech_cfg, params, adj, x, j)
    if "out_shift" in params:  # node_standardize: (f_j - m_j) / s_j, roots included
        out = (out - params["out_shift"][:, j, None]) / params["out_scale"][:, j, None]
    return out


def _nonlinear(mech_cfg, params, adj, x, j) -> np.ndarray:
    """``f_j`` of the nn / gp mechanisms, ``(T, N)``; tasks where j is a root get exactly 0."""
    kind = mech_cfg.kind
    out = np.zeros(x.shape[:2])
    idx = np.flatnonzero(adj[:, :, j].any(axis=1))
    if idx.size == 0:
        return out
    pa_j = adj[idx, :, j].astype(np.float64)  # (T', d)
    inp = x[idx] * pa_j[:, None, :]  # (T', N, d): non-parents zeroed
    if kind == "nn":
        pre = inp @ params["u"][idx, :, j, :]  # (T', N, H)
        pre += params["c"][idx, None, j, :]
        hid = _activation(mech_cfg.activation, pre)
        for layer in range(params["w_deep"].shape[2] if "w_deep" in params else 0):
            pre = hid @ params["w_deep"][idx, j, layer]  # (T', N, H)
            pre += params["c_deep"][idx, None, j, layer, :]
            hid = _activation(mech_cfg.activation, pre)
        out[idx] = (hid @ params["v"][idx, j, :, None])[..., 0]
        return out
    if kind == "gp":
        f = params["omega"].shape[-1]
        proj = inp @ params["omega"][idx, :, j, :]  # (T', N, F)
        proj /= params["lengthscale"][idx, j, None, None]
        proj += params["b"][idx, None, j, :]
        np.cos(proj, out=proj)
        feats = (proj @ params["a"][idx, j, :, None])[..., 0]
        amp = params["amp"][idx, j, None] if "amp" in params else mech_cfg.gp_amplitude
        out[idx] = feats * (amp * np.sqrt(2.0 / f))
        if "lin" in params:
            out[idx] += (inp * params["lin"][idx, None, :, j]).sum(axis=-1)
        return out
    raise ValueError(f"mechanism.kind={kind!r}: unknown mechanism kind")


def standardize_nodes(mech_cfg, params: dict[str, np.ndarray], adj: np.ndarray, n: int,
                      eps: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fold a per-node standardisation into one task's SCM (``mechanism.node_standardize``).

    In causal (canonical) order, node j's observational values under the noise ``eps: (N, d)``
    (raw units, the task's own observational noise) are ``r_j = f_j(x'_pa) + eps_j``, with the
    parents already standardised; with ``m_j, s_j`` their mean and std (ddof 0), the SCM
    becomes ``x'_j = (f_j(x'_pa) - m_j) / s_j + eps_j / s_j``: still additive noise, with
    noise std divided by ``s_j``. Linear / bge fold it into weights and intercepts (their
    closed forms stay valid); nn / gp get ``out_shift = m``, ``out_scale = s`` (``evaluate``
    applies them). Returns the new parameters and ``s: (d,)`` (1 for padding and constant
    nodes), by which the caller divides the noise std.
    """
    d = adj.shape[0]
    p = {key: np.array(val, dtype=np.float64)[None] for key, val in params.items()}
    linear = mech_cfg.kind in ("linear", "bge")
    if not linear:
        p["out_shift"], p["out_scale"] = np.zeros((1, d)), np.ones((1, d))
    x = np.zeros((1,) + eps.shape)
    s_all = np.ones(d)
    for j in range(d):
        raw = evaluate(mech_cfg, p, adj[None], x, j)[0] + eps[:, j]
        m, s = (float(raw.mean()), float(raw.std())) if j < n else (0.0, 1.0)
        s = s if s > 0 else 1.0
        x[0, :, j] = (raw - m) / s
        s_all[j] = s
        if linear:
            p["weights"][0, :, j] /= s
            p["intercepts"][0, j] = (p["intercepts"][0, j] - m) / s
        else:
            p["out_shift"][0, j], p["out_scale"][0, j] = m, s
    return {key: val[0] for key, val in p.items()}, s_all
